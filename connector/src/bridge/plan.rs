//! The bridge's decisions that need no IO, kept apart from the passes that do
//! the IO so they can be tested on their own.

use crmessenger_crm::Person;

/// The name of a new lead: the policy's `leads.nameTemplate` with `{name}`,
/// `{channel}`, `{phone}` and `{username}` filled in (a value the messenger did not
/// give becomes empty; the operator refuses any other placeholder).
pub fn lead_name(template: &str, person: &Person, channel: &str) -> String {
    template
        .replace("{name}", &person.name)
        .replace("{channel}", channel)
        .replace("{phone}", person.phone.as_deref().unwrap_or_default())
        .replace("{username}", person.telegram_username.as_deref().unwrap_or_default())
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_the_operator_accepts_is_filled() {
        let person = Person {
            name: "Anna".into(),
            phone: Some("+79991234567".into()),
            telegram_username: Some("anna_k".into()),
            ..Person::default()
        };
        assert_eq!(
            lead_name("{channel}: {name} {phone} @{username}", &person, "Telegram"),
            "Telegram: Anna +79991234567 @anna_k"
        );
        // What the messenger did not give is left out, not printed as a placeholder.
        let bare = Person { name: "Boris".into(), ..Person::default() };
        assert_eq!(lead_name("{name} {phone}", &bare, "WhatsApp"), "Boris");
    }
}
