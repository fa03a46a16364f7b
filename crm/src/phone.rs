//! Phone numbers normalised to E.164, so `+7 999 123-45-67`, `8 (999) 123 45 67` and
//! `79991234567` are the same person.

/// Normalises a phone number to E.164 (`+79991234567`), or `None` if it is not one.
/// A national Russian/Kazakh number (11 digits starting with 8) becomes +7; `00`
/// is an international prefix.
pub fn normalize(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    let explicit_plus = trimmed.starts_with('+');
    let mut digits: String = trimmed.chars().filter(char::is_ascii_digit).collect();
    if trimmed.chars().any(|c| !(c.is_ascii_digit() || " +-().\u{a0}".contains(c))) {
        return None;
    }
    if !explicit_plus {
        if let Some(rest) = digits.strip_prefix("00") {
            digits = rest.to_string();
        } else if digits.len() == 11 && digits.starts_with('8') {
            digits.replace_range(0..1, "7");
        } else if digits.len() == 10 && digits.starts_with('9') {
            // A Russian mobile number written without its country code.
            digits.insert(0, '7');
        }
    }
    if !(8..=15).contains(&digits.len()) || digits.starts_with('0') {
        return None;
    }
    Some(format!("+{digits}"))
}

/// Texts to search a CRM for, most likely first, so a substring search finds a
/// number however a person typed it: the last ten digits (digits written together),
/// then, for +7 numbers, the subscriber part as Russians write it (`765-43-21`,
/// `765 43 21`). Candidates are then compared by [`normalize`].
pub fn search_keys(e164: &str) -> Vec<String> {
    let digits = e164.trim_start_matches('+');
    let mut keys = vec![digits[digits.len().saturating_sub(10)..].to_string()];
    if digits.len() == 11 && digits.starts_with('7') {
        let sub = &digits[4..];
        keys.push(format!("{}-{}-{}", &sub[..3], &sub[3..5], &sub[5..]));
        keys.push(format!("{} {} {}", &sub[..3], &sub[3..5], &sub[5..]));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_number_normalise_alike() {
        for raw in [
            "+7 999 123-45-67",
            "8 (999) 123-45-67",
            "79991234567",
            "+79991234567",
            "89991234567",
            "9991234567",
            "007 999 1234567",
        ] {
            assert_eq!(normalize(raw).as_deref(), Some("+79991234567"), "{raw}");
        }
    }

    #[test]
    fn other_countries_keep_their_code() {
        assert_eq!(normalize("+44 20 7946 0958").as_deref(), Some("+442079460958"));
        assert_eq!(normalize("+1 (415) 555-2671").as_deref(), Some("+14155552671"));
    }

    #[test]
    fn garbage_is_not_a_phone() {
        for raw in ["", "abc", "+7 999", "12", "+0123456789", "call me"] {
            assert_eq!(normalize(raw), None, "{raw}");
        }
    }

    #[test]
    fn search_keys_cover_common_spellings() {
        assert_eq!(search_keys("+79991234567"), ["9991234567", "123-45-67", "123 45 67"]);
        assert_eq!(search_keys("+442079460958"), ["2079460958"]);
        for typed in ["8 (999) 123-45-67", "+7 999 123 45 67", "89991234567"] {
            assert!(search_keys("+79991234567").iter().any(|k| typed.contains(k.as_str())), "{typed}");
        }
    }
}
