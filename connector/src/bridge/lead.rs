//! A conversation's one lead, in both modes: a returning customer's open lead,
//! the incoming lead amoCRM made (adopted), or a new lead per the policy — and who
//! it is assigned to (the rotation among the CRM's active users, else the
//! fallback user). With `leads.create: false` the conversation is kept on the
//! contact instead.

use super::*;
use crmessenger_crm::{ContactRef, LeadRef, Person};

/// How long the CRM's list of active users is trusted (ms).
const USERS_TTL_MS: i64 = 5 * 60 * 1000;

impl Bridge {
    /// Gives a conversation without a lead its contact (`known`, or found or
    /// created for `person`) and its one lead, and records them; a group's first
    /// sender (`first`) becomes its first member.
    pub(super) async fn give_lead(
        &self,
        chat: &str,
        person: &Person,
        known: Option<i64>,
        group: Option<&plan::Group>,
        first: Option<&crate::messenger::Message>,
        conv: &mut Conversation,
    ) -> Result<(), CrmError> {
        let contact = match known {
            Some(id) => ContactRef { id, created: false },
            None => self.crm.find_or_create_contact(person, &self.s.policy.leads.deduplicate_by).await?,
        };
        let lead = self.conversation_lead(&contact, person, group).await?;
        conv.contact_id = Some(contact.id);
        conv.lead_id = Some(lead.id);
        let now = self.clock.now_ms();
        self.store.put_conversation(self.account(), chat, &self.s.crm_key, conv, now).await.map_err(db)?;
        // The group's lead was created with its first sender's contact.
        if let Some(first) = first.filter(|_| group.is_some()) {
            let member = [(first.sender.id.clone(), contact.id)];
            self.store.add_chat_members(self.account(), chat, &member).await.map_err(db)?;
        }
        Ok(())
    }

    /// The conversation's lead: a returning customer's open lead (nobody new is
    /// assigned), an incoming lead amoCRM made itself (adopted: accepted and put in
    /// the policy's pipeline and stage, with the next responsible user and the
    /// tags), or a new lead. A group's lead is always new: it is no member's.
    pub(super) async fn conversation_lead(
        &self,
        contact: &ContactRef,
        person: &Person,
        group: Option<&plan::Group>,
    ) -> Result<LeadRef, CrmError> {
        if !self.s.policy.leads.create {
            // No leads (`leads.create: false`): the conversation is kept on the
            // contact, and the CRM adapter writes to contacts (`RecordKind::Contacts`).
            return Ok(LeadRef { id: contact.id, created: false, incoming: None });
        }
        let place =
            plan::LeadPlace { pipeline_id: self.s.pipeline_id, status_id: self.s.status_id, responsible_user_id: None };
        let mut request = match group {
            Some(g) => plan::group_lead_request(self.s.texts, &self.s.policy.leads, self.s.channel, g, place),
            None => crmessenger_crm::LeadRequest {
                not_reused: self.store.group_leads(self.account()).await.map_err(db)?,
                ..plan::lead_request(&self.s.policy.leads, self.s.channel, person, place)
            },
        };
        // Reports split leads by account: its lead source, or its tag.
        request.source = self.s.lead_source.clone();
        request.tags.extend(self.s.source_tag.clone());
        if group.is_none() {
            match self.crm.open_lead(contact, &request).await? {
                Some(lead) if lead.incoming.is_some() => {
                    request.responsible_user_id = self.assign().await?;
                    self.crm.adopt_lead(&lead, &request).await?;
                    self.metrics.leads_created.get_or_create(&Metrics::label(self.account())).inc();
                    tracing::info!(account = self.account(), lead = lead.id, "adopted the incoming lead amoCRM made");
                    return Ok(LeadRef { incoming: None, ..lead });
                }
                Some(lead) => return Ok(lead),
                None => {}
            }
        }
        request.responsible_user_id = self.assign().await?;
        request.reuse_open = false;
        let lead = self.crm.find_or_create_lead(contact, &request).await?;
        if lead.created {
            self.metrics.leads_created.get_or_create(&Metrics::label(self.account())).inc();
        }
        Ok(lead)
    }

    /// The responsible user of a new lead: the fixed user, or the next turn of the
    /// binding's rotation (taken only for a lead about to be created; a crash
    /// before it is created skips that turn).
    async fn assign(&self) -> Result<Option<i64>, CrmError> {
        let active = self.active_users().await;
        if !self.assigner.rotates() {
            return Ok(self.assigner.user(0, active.as_deref()));
        }
        let turn = self.store.take_turn(&self.s.binding).await.map_err(db)?;
        Ok(self.assigner.user(turn, active.as_deref()))
    }

    /// The CRM's active users, read again after [`USERS_TTL_MS`]; `None` when the
    /// CRM would not say (then every configured user counts as active, and a
    /// deactivated one shows as a refused lead).
    async fn active_users(&self) -> Option<Vec<i64>> {
        let now = self.clock.now_ms();
        let mut cached = self.active_users.lock().await;
        if let Some((at, users)) = cached.as_ref()
            && now - at < USERS_TTL_MS
        {
            return Some(users.clone());
        }
        match self.crm.active_users().await {
            Ok(users) => {
                *cached = Some((now, users.clone()));
                Some(users)
            }
            Err(e) => {
                tracing::warn!(account = self.account(), "reading the CRM's users: {e}");
                cached.as_ref().map(|(_, u)| u.clone())
            }
        }
    }
}
