//! The CRM side of CRMessenger.
//!
//! - [`Crm`]: what the bridge needs from a CRM, independent of the product (its
//!   records: contacts, leads, notes, tasks, replies), and [`CrmChat`], its chat;
//! - [`budget`]: request budgets (token buckets) with pluggable storage, so every
//!   connector of one CRM integration shares one documented rate limit;
//! - [`amocrm`]: the amoCRM / Kommo adapter (REST v4, OAuth, Chats API). Everything
//!   amoCRM-specific lives there; another CRM is another module.

pub mod amocrm;
pub mod assign;
pub mod backoff;
pub mod budget;
pub mod clock;
pub mod error;
pub mod model;
pub mod phone;
pub mod tls;

pub use error::{CrmError, ErrorClass};
pub use model::*;

use async_trait::async_trait;

/// What the bridge needs from a CRM. Every write either happens once or is reported
/// as an error; an in-doubt write (a timeout after the request was sent) is resolved
/// by the adapter (it looks for what it wrote) before it writes again.
#[async_trait]
pub trait Crm: CrmChat {
    /// The ids of the CRM's users who are active (deactivated users cannot be
    /// given leads).
    async fn active_users(&self) -> Result<Vec<i64>, CrmError>;

    /// Finds the contact for `person` by the identities in `dedup` (in that order),
    /// adding identities it lacks, or creates it.
    async fn find_or_create_contact(&self, person: &Person, dedup: &[DedupKey]) -> Result<ContactRef, CrmError>;

    /// The contact's open lead that `request` would reuse (`reuse_open`, never one
    /// of `not_reused`), if any.
    async fn open_lead(&self, contact: &ContactRef, request: &LeadRequest) -> Result<Option<LeadRef>, CrmError>;

    /// Makes an incoming lead amoCRM created itself (`LeadRef::incoming`) the
    /// conversation's lead: accepts its Unsorted entry and gives it the request's
    /// name, pipeline, stage, responsible user and tags, as a lead of ours.
    async fn adopt_lead(&self, lead: &LeadRef, request: &LeadRequest) -> Result<(), CrmError>;

    /// Returns the contact's open lead when `request.reuse_open` is set and one
    /// exists, or creates a lead linked to the contact.
    async fn find_or_create_lead(&self, contact: &ContactRef, request: &LeadRequest) -> Result<LeadRef, CrmError>;

    /// Links contacts to a lead (each sender of a group chat on the group's lead).
    /// Linking a contact that is linked already changes nothing.
    async fn link_contacts(&self, lead_id: i64, contact_ids: &[i64]) -> Result<(), CrmError>;

    /// Puts a file in the CRM's file storage (amoCRM: an upload session and its
    /// parts on the file service).
    async fn upload_file(&self, file: &FileUpload) -> Result<StoredFile, CrmError>;

    /// Links stored files to a lead (linking one again changes nothing).
    async fn link_files(&self, lead_id: i64, files: &[StoredFile]) -> Result<(), CrmError>;

    /// A stored file's bytes and MIME type, refusing more than `max_bytes`.
    async fn download_file(&self, file: &StoredFile, max_bytes: u64) -> Result<(String, Vec<u8>), CrmError>;

    /// Adds notes to a lead, in order, batched as the CRM allows. Notes whose
    /// marker is already on the lead are not written again.
    async fn add_notes(&self, lead_id: i64, notes: &[NoteRequest]) -> Result<Vec<NoteRef>, CrmError>;

    /// Adds notes to several leads — `(lead_id, note)` pairs, in order — in as few
    /// requests as the CRM allows. Same guarantees as [`Crm::add_notes`].
    async fn add_lead_notes(&self, notes: &[(i64, NoteRequest)]) -> Result<Vec<NoteRef>, CrmError>;

    /// Waits until a request could go out under the CRM's rate budget, taking
    /// nothing; returns whether it waited. Work gathered after this goes out in the
    /// next request.
    async fn ready(&self) -> bool {
        false
    }

    /// Notes on the lead written since `since` (Unix seconds) whose text contains
    /// one of `markers`: how a write interrupted by a crash is found again.
    async fn find_notes(&self, lead_id: i64, since: i64, markers: &[String]) -> Result<Vec<NoteRef>, CrmError>;

    /// Creates a task (unanswered-message escalation).
    async fn add_task(&self, task: &TaskRequest) -> Result<TaskRef, CrmError>;

    /// Marks a task done with a result text.
    async fn complete_task(&self, task_id: i64, result: &str) -> Result<(), CrmError>;

    /// Manager replies written since `cursor`, oldest first, and the cursor to poll
    /// from next.
    async fn poll_replies(&self, cursor: &ReplyCursor) -> Result<(Vec<Reply>, ReplyCursor), CrmError>;

    /// Re-reads one note (e.g. named by an unsigned webhook) and returns it as a
    /// reply if it is one.
    async fn read_reply(&self, lead_id: i64, note_id: i64) -> Result<Option<Reply>, CrmError>;

    /// Subscribes `destination` (the gateway's URL for the binding) to the CRM's
    /// webhooks for managers' notes; subscribing the same destination again
    /// updates the subscription.
    async fn subscribe_reply_webhook(&self, destination: &str) -> Result<(), CrmError>;
}

/// The CRM's chat, where it has one (amoCRM's Chats API): customers' messages in
/// the chat, delivery statuses of managers' messages, and the chat's history.
#[async_trait]
pub trait CrmChat: Send + Sync {
    /// Posts a customer's message into the CRM's chat (Chats API), creating and
    /// linking the chat to the contact first.
    async fn post_chat_message(&self, message: &ChatPost) -> Result<ChatPostRef, CrmError>;

    /// Replaces the text of a message posted earlier (our `msgid` of it), as the
    /// customer edited or deleted it.
    async fn edit_chat_message(&self, conversation_id: &str, msgid: &str, text: &str) -> Result<(), CrmError>;

    /// Reports delivery or read status of a manager's chat message.
    async fn set_delivery_status(&self, crm_message_id: &str, status: DeliveryStatus) -> Result<(), CrmError>;

    /// Messages of a chat conversation, newest first, to recover manager replies
    /// sent while nothing was listening.
    async fn chat_history(
        &self,
        conversation_id: &str,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<ChatHistoryEntry>, CrmError>;
}
