//! Phone numbers normalised to E.164 with libphonenumber's metadata (the
//! `phonenumber` crate), so `+7 999 123-45-67`, `8 (999) 123 45 67` and
//! `79991234567` are the same person, and a number written without its country
//! code is read as the binding's region writes it (`0151 2345 6789` is German
//! under `DE`, `(415) 555-2671` American under `US`).

use phonenumber::country::Id;

/// The region a number without its country code is read in when a binding sets
/// none (amoCRM's home market).
pub const DEFAULT_REGION: &str = "RU";

/// Whether `region` is a region libphonenumber knows (ISO 3166-1 alpha-2, upper case).
pub fn known_region(region: &str) -> bool {
    region.parse::<Id>().is_ok()
}

/// [`normalize_in`] the default region.
pub fn normalize(raw: &str) -> Option<String> {
    normalize_in(raw, DEFAULT_REGION)
}

/// Normalises a phone number to E.164 (`+79991234567`), or `None` if it is not
/// one. A number with `+` (or the `00` international prefix) carries its own
/// country code; any other is read as `region` writes its numbers (its national
/// prefix, such as Russia's 8 or Germany's 0, dropped). Numbers libphonenumber
/// does not list as assigned are kept when they parse: new ranges and test
/// numbers are still someone's phone.
pub fn normalize_in(raw: &str, region: &str) -> Option<String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.chars().any(|c| !(c.is_ascii_digit() || " +-().\u{a0}".contains(c))) {
        return None;
    }
    let international = match trimmed.strip_prefix("00") {
        Some(rest) => format!("+{rest}"),
        None => trimmed.to_string(),
    };
    // A number with its country code is read on its own: the region would only
    // add the region's own prefixes to get wrong.
    let region = if international.starts_with('+') { None } else { region.parse::<Id>().ok() };
    let number = phonenumber::parse(region, &international).ok()?;
    let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
    (9..=16).contains(&e164.len()).then_some(e164)
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
    fn phone_numbers_of_five_countries_map_to_one_e164_each() {
        let cases: [(&str, &str, &[&str]); 5] = [
            (
                "RU",
                "+79161234567",
                &["8 (916) 123-45-67", "+7 916 123 45 67", "9161234567", "79161234567", "8-916-123-4567"],
            ),
            ("DE", "+4915123456789", &["0151 23456789", "+49 151 23456789", "0049 151 2345 6789", "(0151) 234-567-89"]),
            ("US", "+14155552671", &["(415) 555-2671", "415.555.2671", "+1 415 555 2671", "1 (415) 555-2671"]),
            ("GB", "+442079460958", &["020 7946 0958", "+44 20 7946 0958", "0044 20 7946 0958", "(020) 7946-0958"]),
            ("BR", "+5511912345678", &["(11) 91234-5678", "+55 11 91234-5678", "11 912345678", "0055 11 91234 5678"]),
        ];
        for (region, e164, spellings) in cases {
            for raw in spellings {
                assert_eq!(normalize_in(raw, region).as_deref(), Some(e164), "{raw} in {region}");
            }
            // With its country code a number means the same under any region.
            assert_eq!(normalize_in(e164, "US").as_deref(), Some(e164));
            assert!(known_region(region));
        }
        // Without it, the region decides: a German mobile is not a Russian number.
        assert_ne!(normalize_in("0151 23456789", "RU").as_deref(), Some("+4915123456789"));
        assert!(!known_region("XX"));
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
