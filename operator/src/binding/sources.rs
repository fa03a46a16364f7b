//! Each bound account a lead source in the CRM (the Sources API), so amoCRM's
//! reports split leads by account; recorded in the binding's status. Where the
//! CRM cannot have them (no administrator's token, or no widget with the
//! `lead_sources` location), `LeadSourcesReady=False` says so and the accounts'
//! leads carry the account's name as a tag instead.

use super::Context;
use crate::conditions::Verdict;
use crmessenger_api::CrmBinding;
use crmessenger_api::common::conditions::LEAD_SOURCES_READY;
use crmessenger_api::config::lead_source_id;
use crmessenger_crm::amocrm::sources::{self, Outcome, Wanted};

/// `LeadSourcesReady` and the accounts whose source exists.
pub async fn ensure(
    binding: &CrmBinding,
    ctx: &Context,
    ns: &str,
    bound: &[String],
    credentials_ok: bool,
    ca_pem: Option<&str>,
) -> (Verdict, Vec<String>) {
    if binding.spec.crm.amocrm.as_ref().is_some_and(|a| !a.lead_sources) {
        let msg = "spec.crm.amocrm.leadSources is false: each account's leads are tagged with its name";
        return (Verdict::yes(LEAD_SOURCES_READY, "Disabled", msg), Vec::new());
    }
    let recorded: Vec<String> = binding.status.as_ref().map(|s| s.lead_sources.clone()).unwrap_or_default();
    if !bound.is_empty() && bound.iter().all(|a| recorded.contains(a)) {
        let msg = format!("lead sources in the CRM for {}", bound.join(", "));
        return (Verdict::yes(LEAD_SOURCES_READY, "Created", msg), bound.to_vec());
    }
    let Some(amo) = binding.spec.crm.amocrm.as_ref().filter(|_| credentials_ok && !bound.is_empty()) else {
        let msg = "waiting for valid credentials and a bound account";
        return (Verdict::no(LEAD_SOURCES_READY, "Waiting", msg), recorded);
    };
    let key = format!("sources:{ns}/{}/{}", binding.metadata.name.clone().unwrap_or_default(), bound.join(","));
    if let Some(v) = ctx.recent_failure(&key) {
        return (v, recorded);
    }
    let wanted: Vec<Wanted> =
        bound.iter().map(|a| Wanted { external_id: lead_source_id(ns, a), name: a.clone() }).collect();
    let made = match ctx.crm_rest(binding, &amo.base_url, ca_pem).await {
        Ok(rest) => sources::ensure(&rest, &wanted, amo.pipeline_id).await,
        Err(e) => Err(e),
    };
    let verdict = match made {
        Ok(Outcome::Ready) => {
            let msg = format!("lead sources in the CRM for {}", bound.join(", "));
            return (Verdict::yes(LEAD_SOURCES_READY, "Created", msg), bound.to_vec());
        }
        Ok(Outcome::Unavailable(why)) => Verdict::no(
            LEAD_SOURCES_READY,
            "SourcesUnavailable",
            format!(
                "the CRM refused lead sources ({why}): they need an administrator's token and the integration's widget with the lead_sources location (integrations/amocrm-widget/ in the repository); until then each account's leads are tagged with the account's name"
            ),
        ),
        Err(e) => Verdict::no(LEAD_SOURCES_READY, "CrmUnavailable", format!("adding lead sources: {e}")),
    };
    ctx.remember_failure(key, &verdict);
    (verdict, recorded)
}

#[cfg(test)]
mod tests {
    /// The widget shipped for the Sources API grants the `lead_sources` location,
    /// and every text its manifest names exists in both languages.
    #[test]
    fn the_shipped_widget_grants_lead_sources_in_both_languages() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../integrations/amocrm-widget");
        let read = |p: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(p)).unwrap()).unwrap()
        };
        let manifest = read("manifest.json");
        assert!(manifest["locations"].as_array().unwrap().iter().any(|l| l == "lead_sources"));
        for lang in ["en", "ru"] {
            let texts = read(&format!("i18n/{lang}.json"));
            for key in ["name", "description", "short_description"] {
                let named = manifest["widget"][key].as_str().unwrap();
                let (group, field) = named.split_once('.').unwrap();
                assert!(texts[group][field].as_str().is_some_and(|t| !t.is_empty()), "{lang}: {named}");
            }
        }
    }
}
