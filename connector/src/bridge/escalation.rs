//! Escalation: one CRM task per conversation left unanswered past the policy's delay.

use super::*;

impl Bridge {
    pub(super) async fn escalation_loop(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let esc = self.s.policy.escalation.clone();
        let after = crmessenger_api::common::parse_duration(&esc.after);
        let deadline = crmessenger_api::common::parse_duration(&esc.deadline).unwrap_or(Duration::from_secs(3600));
        let (true, Some(after)) = (esc.enabled, after) else { return };
        while !*stop.borrow() {
            let now = self.clock.now_ms();
            match self.store.unanswered(self.account(), now - after.as_millis() as i64).await {
                Ok(list) => {
                    for (chat, mut conv) in list {
                        let Some(lead_id) = conv.lead_id else { continue };
                        let task = plan::escalation_task(lead_id, &esc.task_text, now, deadline);
                        match self.crm.add_task(&task).await {
                            Ok(t) => {
                                conv.task_id = Some(t.id);
                                if let Err(e) = self
                                    .store
                                    .put_conversation(self.account(), &chat, &self.s.crm_key, &conv, now)
                                    .await
                                {
                                    self.store_failed("recording an escalation task", &e);
                                }
                            }
                            Err(e) => tracing::warn!(account = self.account(), chat, "escalation task failed: {e}"),
                        }
                    }
                }
                Err(e) => tracing::warn!("escalation: {e}"),
            }
            self.metrics.escalation_checks.get_or_create(&Metrics::label(self.account())).inc();
            self.clock.sleep(Duration::from_secs(5)).await;
        }
    }
}
