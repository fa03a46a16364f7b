//! The words the connector writes for people in the CRM (notes, lead names,
//! escalation tasks, what a message carries), in the binding's language.

use crmessenger_api::binding::Language;

/// One language's words.
#[derive(Debug, PartialEq, Eq)]
pub struct Texts {
    /// Who wrote a message from the account's own app.
    pub account_owner: &'static str,
    /// Before a group's title: "… in Sunday market".
    pub in_chat: &'static str,
    /// After the author of an edited message.
    pub edited: &'static str,
    /// A customer's deletion, before the message id.
    pub customer_deleted_message: &'static str,
    /// Before a message id in a status note.
    pub message: &'static str,
    /// A read receipt, before the message id.
    pub read_up_to: &'static str,
    /// A group's lead name, before its member count.
    pub group_of: &'static str,
    /// What a message deleted by the customer says in the CRM's chat.
    pub deleted_in_chat: &'static str,
    /// Before a forward's origin.
    pub forwarded_from: &'static str,
    /// A shared location.
    pub location: &'static str,
    /// A shared contact card.
    pub contact: &'static str,
    /// A file's size unit.
    pub bytes: &'static str,
    /// An escalation task's text when the policy sets none.
    pub task_text: &'static str,
    /// A note's file line: where the file went.
    pub in_lead_files: &'static str,
    /// A note's file line: why the file is not there.
    pub not_attached: &'static str,
    /// Why: the policy's media limit (before the limit in MiB).
    pub over_media_limit: &'static str,
    /// Why: the policy's media mode is `skip`.
    pub media_skipped: &'static str,
    /// Why: the CRM refused the file.
    pub crm_refused_file: &'static str,
}

/// English.
pub const EN: Texts = Texts {
    account_owner: "the account owner",
    in_chat: "in",
    edited: "(edited)",
    customer_deleted_message: "the customer deleted message",
    message: "message",
    read_up_to: "read up to message",
    group_of: "group of",
    deleted_in_chat: "[the customer deleted this message]",
    forwarded_from: "forwarded from",
    location: "location",
    contact: "contact",
    bytes: "bytes",
    task_text: "A customer is waiting for a reply",
    in_lead_files: "in the lead's files",
    not_attached: "not attached",
    over_media_limit: "over the policy's media limit of",
    media_skipped: "the policy's media mode is skip",
    crm_refused_file: "the CRM refused the file",
};

/// Russian.
pub const RU: Texts = Texts {
    account_owner: "владелец аккаунта",
    in_chat: "в",
    edited: "(изменено)",
    customer_deleted_message: "клиент удалил сообщение",
    message: "сообщение",
    read_up_to: "прочитано до сообщения",
    group_of: "группа из",
    deleted_in_chat: "[клиент удалил это сообщение]",
    forwarded_from: "переслано от",
    location: "местоположение",
    contact: "контакт",
    bytes: "байт",
    task_text: "Клиент ждёт ответа",
    in_lead_files: "в файлах сделки",
    not_attached: "не прикреплён",
    over_media_limit: "больше предела политики для медиа,",
    media_skipped: "политика не передаёт медиа",
    crm_refused_file: "CRM отклонила файл",
};

/// The words of `language`.
pub fn of(language: Language) -> &'static Texts {
    match language {
        Language::En => &EN,
        Language::Ru => &RU,
    }
}
