//! Conversations: each chat's contact, lead and CRM chat, who wrote last, and
//! what is unanswered (escalation).

use super::*;

impl Store {
    /// What `chat_id` maps to.
    pub async fn conversation(&self, account: &str, chat_id: &str) -> Result<Option<Conversation>> {
        let row = sqlx::query(
            "SELECT contact_id, lead_id, crm_chat_id, unanswered_since_ms, task_id FROM conversations
             WHERE account = $1 AND chat_id = $2",
        )
        .bind(account)
        .bind(chat_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| conversation_of(&r)).transpose()
    }

    /// The account's chats that have a CRM chat (Chats API), most recently active first.
    pub async fn chat_conversations(&self, account: &str, limit: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT chat_id FROM conversations WHERE account = $1 AND crm_chat_id IS NOT NULL
             ORDER BY updated_ms DESC LIMIT $2",
        )
        .bind(account)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("chat_id")?)).collect()
    }

    /// What each of `chats` maps to (chats never seen are absent), in one query.
    pub async fn conversations(&self, account: &str, chats: &[String]) -> Result<HashMap<String, Conversation>> {
        let mut out = HashMap::new();
        for part in chats.chunks(500) {
            let marks: Vec<String> = (0..part.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT chat_id, contact_id, lead_id, crm_chat_id, unanswered_since_ms, task_id FROM conversations
                 WHERE account = $1 AND chat_id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(account);
            for chat in part {
                q = q.bind(chat);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.insert(r.try_get("chat_id")?, conversation_of(&r)?);
            }
        }
        Ok(out)
    }

    /// Stores what `chat_id` maps to (`crm` names the CRM account, for routing).
    pub async fn put_conversation(
        &self,
        account: &str,
        chat_id: &str,
        crm: &str,
        c: &Conversation,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO conversations (account, chat_id, crm, contact_id, lead_id, crm_chat_id, unanswered_since_ms, task_id, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (account, chat_id) DO UPDATE SET crm = excluded.crm, contact_id = excluded.contact_id,
               lead_id = excluded.lead_id, crm_chat_id = excluded.crm_chat_id,
               unanswered_since_ms = excluded.unanswered_since_ms, task_id = excluded.task_id, updated_ms = excluded.updated_ms",
        )
        .bind(account)
        .bind(chat_id)
        .bind(crm)
        .bind(c.contact_id)
        .bind(c.lead_id)
        .bind(c.crm_chat_id.clone())
        .bind(c.unanswered_since_ms)
        .bind(c.task_id)
        .bind(now_ms)
        .run(self)
        .await?;
        Ok(())
    }

    /// The account and chat a manager's reply on `lead_id` goes to. Several chats
    /// can share a lead (the same person on Telegram and WhatsApp, a reused open
    /// lead): the reply goes to the chat of the latest customer message, ties
    /// broken by the last change and then by name, so the choice is deterministic.
    pub async fn chat_of_lead(&self, crm: &str, lead_id: i64) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT account, chat_id FROM conversations WHERE crm = $1 AND lead_id = $2
             ORDER BY COALESCE(last_customer_ms, 0) DESC, updated_ms DESC, account, chat_id LIMIT 1",
        )
        .bind(crm)
        .bind(lead_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("account")?, r.try_get("chat_id")?))).transpose()
    }

    /// Records that the customer of `chat_id` wrote at `at_ms` (only ever forward).
    pub async fn customer_wrote(&self, account: &str, chat_id: &str, at_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE conversations SET last_customer_ms = $3
             WHERE account = $1 AND chat_id = $2 AND (last_customer_ms IS NULL OR last_customer_ms < $3)",
        )
        .bind(account)
        .bind(chat_id)
        .bind(at_ms)
        .run(self)
        .await?;
        Ok(())
    }

    /// The customer of `chat_id` waits for an answer since `since_ms`, unless they
    /// already were waiting (the earlier wait stands).
    pub async fn start_waiting(&self, account: &str, chat_id: &str, since_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE conversations SET unanswered_since_ms = $3
             WHERE account = $1 AND chat_id = $2 AND unanswered_since_ms IS NULL",
        )
        .bind(account)
        .bind(chat_id)
        .bind(since_ms)
        .run(self)
        .await?;
        Ok(())
    }

    /// The conversation was answered: nobody waits any more; returns the
    /// escalation task to complete, taken off the conversation in the same step
    /// (compare-and-set, so a task the escalation loop records meanwhile is
    /// either returned here or sees the answer and completes itself).
    /// Also returns since when the customer had waited, if they had.
    pub async fn take_answered(&self, account: &str, chat_id: &str) -> Result<(Option<i64>, Option<i64>)> {
        loop {
            let Some(conv) = self.conversation(account, chat_id).await? else { return Ok((None, None)) };
            let done = sqlx::query(
                "UPDATE conversations SET unanswered_since_ms = NULL, task_id = NULL
                 WHERE account = $1 AND chat_id = $2 AND task_id IS NOT DISTINCT FROM $3",
            )
            .bind(account)
            .bind(chat_id)
            .bind(conv.task_id)
            .run(self)
            .await?;
            if done.rows_affected() > 0 {
                return Ok((conv.task_id, conv.unanswered_since_ms));
            }
        }
    }

    /// Records the escalation task made for the wait that began at `since_ms`;
    /// false when that wait is over (answered meanwhile: the task is not needed).
    pub async fn set_escalation_task(&self, account: &str, chat_id: &str, since_ms: i64, task_id: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE conversations SET task_id = $4
             WHERE account = $1 AND chat_id = $2 AND unanswered_since_ms = $3 AND task_id IS NULL",
        )
        .bind(account)
        .bind(chat_id)
        .bind(since_ms)
        .bind(task_id)
        .run(self)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Answered conversations whose escalation task is still open (its completion
    /// failed): `(chat, task)`.
    pub async fn answered_open_tasks(&self, account: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT chat_id, task_id FROM conversations
             WHERE account = $1 AND unanswered_since_ms IS NULL AND task_id IS NOT NULL",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("chat_id")?, r.try_get("task_id")?))).collect()
    }

    /// Sets the conversation's escalation task to `new` if it is still `expected`
    /// (compare-and-set): `(Some(t), None)` takes a completed task off,
    /// `(None, Some(t))` puts back one whose completion the CRM refused, for the
    /// escalation loop to complete later.
    pub async fn replace_task(
        &self,
        account: &str,
        chat_id: &str,
        expected: Option<i64>,
        new: Option<i64>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE conversations SET task_id = $4
             WHERE account = $1 AND chat_id = $2 AND task_id IS NOT DISTINCT FROM $3",
        )
        .bind(account)
        .bind(chat_id)
        .bind(expected)
        .bind(new)
        .run(self)
        .await?;
        Ok(())
    }

    /// Conversations of `account` waiting for an answer since before `before_ms`
    /// without an escalation task.
    pub async fn unanswered(&self, account: &str, before_ms: i64) -> Result<Vec<(String, Conversation)>> {
        let rows = sqlx::query(
            "SELECT chat_id, contact_id, lead_id, crm_chat_id, unanswered_since_ms, task_id FROM conversations
             WHERE account = $1 AND unanswered_since_ms IS NOT NULL AND unanswered_since_ms <= $2 AND task_id IS NULL",
        )
        .bind(account)
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("chat_id")?, conversation_of(r)?))).collect()
    }

    /// The oldest unanswered customer message of `account`, if any.
    pub async fn oldest_unanswered_ms(&self, account: &str) -> Result<Option<i64>> {
        let r = sqlx::query("SELECT MIN(unanswered_since_ms) AS m FROM conversations WHERE account = $1")
            .bind(account)
            .fetch_one(&self.pool)
            .await?;
        opt_i64(&r, "m")
    }
    /// The senders of a group chat whose contacts are linked to its lead, with
    /// their contacts.
    pub async fn chat_members(&self, account: &str, chat_id: &str) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query("SELECT sender_id, contact_id FROM chat_members WHERE account = $1 AND chat_id = $2")
            .bind(account)
            .bind(chat_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("sender_id")?, r.try_get("contact_id")?))).collect()
    }

    /// The leads of the account's group chats.
    pub async fn group_leads(&self, account: &str) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT DISTINCT c.lead_id FROM conversations c
             JOIN chat_members m ON m.account = c.account AND m.chat_id = c.chat_id
             WHERE c.account = $1 AND c.lead_id IS NOT NULL",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("lead_id")?)).collect()
    }

    /// Records that the senders' contacts (`(sender, contact)`) are linked to the
    /// group chat's lead.
    pub async fn add_chat_members(&self, account: &str, chat_id: &str, members: &[(String, i64)]) -> Result<()> {
        for (sender, contact) in members {
            sqlx::query(
                "INSERT INTO chat_members (account, chat_id, sender_id, contact_id) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account, chat_id, sender_id) DO UPDATE SET contact_id = excluded.contact_id",
            )
            .bind(account)
            .bind(chat_id)
            .bind(sender)
            .bind(contact)
            .run(self)
            .await?;
        }
        Ok(())
    }
    /// Takes the next turn of `binding`'s assignment rotation (0, 1, 2, …): one
    /// counter in the database, so every connector of the binding shares it and a
    /// restart continues it.
    pub async fn take_turn(&self, binding: &str) -> Result<u64> {
        let r = sqlx::query(
            "INSERT INTO assignment_turns (binding, next_turn) VALUES ($1, 1)
             ON CONFLICT (binding) DO UPDATE SET next_turn = assignment_turns.next_turn + 1
             RETURNING next_turn",
        )
        .bind(binding)
        .fetch_one(&self.pool)
        .await?;
        Ok((i64_col(&r, "next_turn")? - 1).max(0) as u64)
    }
}
