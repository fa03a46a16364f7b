//! The fixed shape of the fake account: users, the pipeline and contact custom fields.

/// The main pipeline's ID.
pub const MAIN_PIPELINE_ID: i64 = 7_000_001;
/// The Unsorted stage (type 1) of the main pipeline.
pub const UNSORTED_STATUS_ID: i64 = 70_000_010;
/// The first normal stage: the default status of new leads.
pub const FIRST_STAGE_ID: i64 = 70_000_011;
/// The second normal stage.
pub const SECOND_STAGE_ID: i64 = 70_000_012;
/// Closed, won.
pub const WON_STATUS_ID: i64 = 142;
/// Closed, lost.
pub const LOST_STATUS_ID: i64 = 143;

/// The user the API tokens belong to (an admin).
pub const TOKEN_USER_ID: i64 = 1001;

/// A user of the account.
#[derive(Clone, Debug)]
pub struct User {
    /// User ID.
    pub id: i64,
    /// Name.
    pub name: &'static str,
    /// Login email.
    pub email: &'static str,
    /// The user's ID in the Chats API.
    pub amojo_id: String,
    /// Admin rights.
    pub is_admin: bool,
}

/// The three users (IDs 1001..=1003); `amojo_ids` gives their chat IDs.
pub fn users(amojo_ids: [String; 3]) -> Vec<User> {
    let [a, b, c] = amojo_ids;
    vec![
        User { id: 1001, name: "Admin Adminov", email: "admin@example.test", amojo_id: a, is_admin: true },
        User { id: 1002, name: "Manager Petrova", email: "petrova@example.test", amojo_id: b, is_admin: false },
        User { id: 1003, name: "Manager Sidorov", email: "sidorov@example.test", amojo_id: c, is_admin: false },
    ]
}

/// A pipeline stage.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    /// Status ID.
    pub id: i64,
    /// Name.
    pub name: &'static str,
    /// 1 = Unsorted, 0 = normal.
    pub kind: i64,
    /// Sort order.
    pub sort: i64,
}

/// The stages of the main (and only) pipeline.
pub const STATUSES: [Status; 5] = [
    Status { id: UNSORTED_STATUS_ID, name: "Неразобранное", kind: 1, sort: 10 },
    Status { id: FIRST_STAGE_ID, name: "Первичный контакт", kind: 0, sort: 20 },
    Status { id: SECOND_STAGE_ID, name: "Переговоры", kind: 0, sort: 30 },
    Status { id: WON_STATUS_ID, name: "Успешно реализовано", kind: 0, sort: 10000 },
    Status { id: LOST_STATUS_ID, name: "Закрыто и не реализовано", kind: 0, sort: 11000 },
];

/// Looks a status of the main pipeline up.
pub fn status(id: i64) -> Option<&'static Status> {
    STATUSES.iter().find(|s| s.id == id)
}

/// An enum value of a multitext field.
#[derive(Clone, Copy, Debug)]
pub struct FieldEnum {
    /// Enum ID.
    pub id: i64,
    /// Code, e.g. "MOB".
    pub code: &'static str,
}

/// A contact custom field.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// Field ID.
    pub id: i64,
    /// Display name.
    pub name: &'static str,
    /// Code ("PHONE", "EMAIL") or none.
    pub code: Option<&'static str>,
    /// "multitext" or "text".
    pub kind: &'static str,
    /// Enums for multitext fields.
    pub enums: &'static [FieldEnum],
}

const PHONE_ENUMS: [FieldEnum; 6] = [
    FieldEnum { id: 10001, code: "WORK" },
    FieldEnum { id: 10002, code: "WORKDD" },
    FieldEnum { id: 10003, code: "MOB" },
    FieldEnum { id: 10004, code: "FAX" },
    FieldEnum { id: 10005, code: "HOME" },
    FieldEnum { id: 10006, code: "OTHER" },
];

const EMAIL_ENUMS: [FieldEnum; 3] = [
    FieldEnum { id: 10011, code: "WORK" },
    FieldEnum { id: 10012, code: "PRIV" },
    FieldEnum { id: 10013, code: "OTHER" },
];

/// Contact custom fields every account has: PHONE 100, EMAIL 101.
pub const BUILT_IN_FIELDS: [Field; 2] = [
    Field { id: 100, name: "Телефон", code: Some("PHONE"), kind: "multitext", enums: &PHONE_ENUMS },
    Field { id: 101, name: "Email", code: Some("EMAIL"), kind: "multitext", enums: &EMAIL_ENUMS },
];

/// Text fields for messenger identities, 201..203, as an administrator would have
/// made them by hand (present unless `FakeConfig::identity_fields` is off).
pub const IDENTITY_FIELDS: [Field; 3] = [
    Field { id: 201, name: "Telegram ID", code: None, kind: "text", enums: &[] },
    Field { id: 202, name: "Telegram username", code: None, kind: "text", enums: &[] },
    Field { id: 203, name: "WhatsApp ID", code: None, kind: "text", enums: &[] },
];

/// Custom fields created over the API get ids from here on.
pub const CREATED_FIELD_IDS: i64 = 301;
