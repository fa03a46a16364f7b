//! Escalation: one CRM task per conversation left unanswered past the policy's
//! delay, completed once the conversation is answered (retried here when the CRM
//! could not be told at the time).

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
                    for (chat, conv) in list {
                        let (Some(lead_id), Some(since)) = (conv.lead_id, conv.unanswered_since_ms) else { continue };
                        let text = esc.task_text.as_deref().unwrap_or(self.s.texts.task_text);
                        let task = plan::escalation_task(lead_id, text, now, deadline);
                        self.escalate(&chat, since, &task).await;
                    }
                }
                Err(e) => tracing::warn!("escalation: {e}"),
            }
            self.complete_answered().await;
            self.metrics.escalation_checks.get_or_create(&Metrics::label(self.account())).inc();
            self.clock.sleep(Duration::from_secs(5)).await;
        }
    }

    /// Makes the task for the wait that began at `since` and records it; when the
    /// conversation was answered meanwhile, the task is completed at once.
    async fn escalate(&self, chat: &str, since: i64, task: &TaskRequest) {
        let t = match self.crm.add_task(task).await {
            Ok(t) => t,
            Err(e) => return tracing::warn!(account = self.account(), chat, "escalation task failed: {e}"),
        };
        match self.store.set_escalation_task(self.account(), chat, since, t.id).await {
            Ok(true) => {}
            Ok(false) => {
                if let Err(e) = self.crm.complete_task(t.id, "answered").await {
                    tracing::warn!(account = self.account(), chat, "completing an escalation task: {e}");
                    if let Err(e) = self.store.replace_task(self.account(), chat, None, Some(t.id)).await {
                        self.store_failed("keeping an escalation task", &e);
                    }
                }
            }
            Err(e) => self.store_failed("recording an escalation task", &e),
        }
    }

    /// Completes the tasks of answered conversations that the CRM could not be
    /// told about when the answer came.
    async fn complete_answered(&self) {
        let open = match self.store.answered_open_tasks(self.account()).await {
            Ok(open) => open,
            Err(e) => return tracing::warn!("escalation: {e}"),
        };
        for (chat, task) in open {
            match self.crm.complete_task(task, "answered").await {
                Ok(()) => {
                    if let Err(e) = self.store.replace_task(self.account(), &chat, Some(task), None).await {
                        self.store_failed("recording a completed escalation task", &e);
                    }
                }
                Err(e) => tracing::warn!(account = self.account(), chat, task, "completing an escalation task: {e}"),
            }
        }
    }
}
