//! The identity fields of contacts (Telegram user id and username, WhatsApp id):
//! found or created in the CRM once per binding with its token, and recorded in
//! the binding's status, so nobody types field ids by hand. Without an
//! administrator's token the status names the fields to create.

use super::Context;
use crate::conditions::Verdict;
use crmessenger_api::CrmBinding;
use crmessenger_api::binding::ContactFields;
use crmessenger_api::common::conditions::CONTACT_FIELDS_READY;
use crmessenger_crm::amocrm::identity::{self, Outcome};

/// `ContactFieldsReady` and the field ids to record in the status.
pub async fn ensure(
    binding: &CrmBinding,
    ctx: &Context,
    ns: &str,
    credentials_ok: bool,
    ca_pem: Option<&str>,
) -> (Verdict, Option<ContactFields>) {
    let Some(amo) = &binding.spec.crm.amocrm else {
        return (Verdict::no(CONTACT_FIELDS_READY, "InvalidSpec", "no amocrm settings"), None);
    };
    let spec = &amo.contact_fields;
    if spec.telegram_user_id.is_some() && spec.telegram_username.is_some() && spec.whatsapp_id.is_some() {
        return (
            Verdict::yes(CONTACT_FIELDS_READY, "FromSpec", "spec.crm.amocrm.contactFields names every field"),
            None,
        );
    }
    let recorded = binding.status.as_ref().and_then(|s| s.contact_fields.clone());
    if let Some(r) = recorded.as_ref().filter(|r| complete(r)) {
        let msg = format!("identity fields of contacts: {}", describe(r));
        return (Verdict::yes(CONTACT_FIELDS_READY, "Created", msg), Some(r.clone()));
    }
    if !credentials_ok {
        let msg = "waiting for valid credentials to look up the identity fields of contacts";
        return (Verdict::no(CONTACT_FIELDS_READY, "WaitingForCredentials", msg), recorded);
    }
    let key = format!("fields:{ns}/{}", binding.metadata.name.clone().unwrap_or_default());
    if let Some(v) = ctx.recent_failure(&key) {
        return (v, recorded);
    }
    let looked = match ctx.crm_rest(binding, &amo.base_url, ca_pem).await {
        Ok(rest) => identity::ensure(&rest).await,
        Err(e) => Err(e),
    };
    let verdict = match looked {
        Ok(Outcome::Ready(f)) => {
            let ids = ContactFields {
                telegram_user_id: f.telegram_user_id,
                telegram_username: f.telegram_username,
                whatsapp_id: f.whatsapp_id,
            };
            let msg = format!("identity fields of contacts: {}", describe(&ids));
            return (Verdict::yes(CONTACT_FIELDS_READY, "Created", msg), Some(ids));
        }
        Ok(Outcome::AdminRequired(missing)) => {
            let names: Vec<String> = missing.iter().map(|f| format!("\"{}\" (code {})", f.name, f.code)).collect();
            Verdict::no(
                CONTACT_FIELDS_READY,
                "AdminTokenRequired",
                format!(
                    "the integration's token may not create contact fields (an administrator's can): create text fields of contacts {} in amoCRM, or name fields in spec.crm.amocrm.contactFields; until then customers are matched by phone only",
                    names.join(", ")
                ),
            )
        }
        Err(e) => Verdict::no(CONTACT_FIELDS_READY, "CrmUnavailable", format!("looking up contact fields: {e}")),
    };
    ctx.remember_failure(key, &verdict);
    (verdict, recorded)
}

fn complete(f: &ContactFields) -> bool {
    f.telegram_user_id.is_some() && f.telegram_username.is_some() && f.whatsapp_id.is_some()
}

fn describe(f: &ContactFields) -> String {
    let id = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    format!(
        "Telegram user id {}, Telegram username {}, WhatsApp id {}",
        id(f.telegram_user_id),
        id(f.telegram_username),
        id(f.whatsapp_id)
    )
}
