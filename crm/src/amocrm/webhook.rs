//! amoCRM REST webhooks: unsigned, form-encoded with PHP bracket keys. They are only
//! hints: the notes they name are re-read over REST before anything is sent.

use std::collections::BTreeMap;

/// What a webhook says happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestWebhook {
    /// `account[id]`.
    pub account_id: Option<i64>,
    /// `account[subdomain]`.
    pub subdomain: Option<String>,
    /// Notes added to leads (or to contacts, where conversations are kept on
    /// contacts): (record id, note id).
    pub lead_notes: Vec<(i64, i64)>,
}

/// Parses a webhook body. Errors name what is wrong; nothing else happens.
pub fn parse(body: &[u8]) -> Result<RestWebhook, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|e| format!("not a form-encoded body: {e}"))?;
    let mut hook = RestWebhook::default();
    // leads[note][N][note][FIELD] = value (contacts[note]… alike), grouped by N.
    let mut notes: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (key, value) in pairs {
        match key.as_str() {
            "account[id]" => hook.account_id = value.parse().ok(),
            "account[subdomain]" => hook.subdomain = Some(value),
            _ => {
                if let Some(rest) = key.strip_prefix("leads[note][").or_else(|| key.strip_prefix("contacts[note]["))
                    && let Some((index, field)) = rest.split_once("][note][")
                {
                    notes.entry(index.to_string()).or_default().insert(field.trim_end_matches(']').to_string(), value);
                }
            }
        }
    }
    for (index, fields) in notes {
        let lead = fields.get("element_id").and_then(|v| v.parse().ok());
        let note = fields.get("id").and_then(|v| v.parse().ok());
        match (lead, note) {
            (Some(lead), Some(note)) => hook.lead_notes.push((lead, note)),
            _ => return Err(format!("note {index} lacks a numeric id or element_id")),
        }
    }
    if hook.account_id.is_none() {
        return Err("no account[id]".into());
    }
    Ok(hook)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_webhook_names_the_lead_and_the_note() {
        let body = "leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Bid%5D=77&leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Belement_id%5D=12&leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Btext%5D=%3E%3E+hi&account%5Bid%5D=31000001&account%5Bsubdomain%5D=example";
        let hook = parse(body.as_bytes()).expect("parses");
        assert_eq!(
            hook,
            RestWebhook { account_id: Some(31000001), subdomain: Some("example".into()), lead_notes: vec![(12, 77)] }
        );
    }

    #[test]
    fn a_note_on_a_contact_names_the_contact_and_the_note() {
        let body = "contacts%5Bnote%5D%5B0%5D%5Bnote%5D%5Bid%5D=78&contacts%5Bnote%5D%5B0%5D%5Bnote%5D%5Belement_id%5D=13&account%5Bid%5D=31000001";
        assert_eq!(parse(body.as_bytes()).expect("parses").lead_notes, vec![(13, 78)]);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(parse(b"account%5Bid%5D=1&leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Bid%5D=x").is_err());
        assert!(parse(b"leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Bid%5D=1").is_err());
        assert!(parse(b"\xff\xfe").is_err());
    }
}
