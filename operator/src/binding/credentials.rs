//! The bootstrap credentials Secret of a binding: which keys it must hold (the rule
//! itself lives in `crmessenger_crm::amocrm::grant`, shared with standalone mode).

use crate::conditions::Verdict;
use crmessenger_api::common::conditions::CREDENTIALS_VALID;
pub use crmessenger_crm::amocrm::grant::{Bootstrap, Grant};
use std::collections::BTreeMap;

/// Reads the bootstrap Secret's data, or says which keys are missing.
pub fn read(secret_name: &str, data: &BTreeMap<String, String>) -> Result<Bootstrap, Verdict> {
    Bootstrap::read(secret_name, data).map_err(|m| Verdict::no(CREDENTIALS_VALID, "SecretKeysMissing", m))
}

pub use crmessenger_api::common::secret_strings as decode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_keys_give_a_verdict_naming_them() {
        let data = BTreeMap::from([("client_id".to_string(), "id".to_string())]);
        let e = read("amo", &data).unwrap_err();
        assert_eq!(e.reason, "SecretKeysMissing");
        assert!(e.message.contains("Secret amo lacks client_secret"), "{}", e.message);
    }
}
