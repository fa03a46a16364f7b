//! WhatsApp Web's session storage (the `whatsapp-web` feature): whatsapp-rust's
//! backend over the connector's database, on PostgreSQL and SQLite — what it keeps
//! survives a restart, is sealed at rest, and the library starts on it.
#![cfg(feature = "whatsapp-web")]

use crmessenger_connector::messenger::whatsapp_web::store::WaStore;
use crmessenger_connector::store::crypto::SessionKey;
use crmessenger_connector::store::{POOL_SIZE, Store};
use crmessenger_testkit::Postgres;
use std::sync::Arc;
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceStore, LidPnMappingEntry, MsgSecretEntry, MsgSecretStore, ProtocolStore,
    SignalStore, TcTokenEntry,
};

const ACCOUNT: &str = "shop/wa-web";

fn key() -> SessionKey {
    SessionKey::parse(&"07".repeat(32)).unwrap()
}

async fn round_trip(db: Store) {
    let s = WaStore::new(db.clone(), key(), ACCOUNT);
    // Device: created once, saved, loaded.
    assert!(!s.exists().await.unwrap());
    s.create().await.unwrap();
    assert!(s.exists().await.unwrap());
    let mut device = s.load().await.unwrap().unwrap();
    device.push_name = "Shop".into();
    s.save(&device).await.unwrap();

    // Signal records.
    s.put_identity("15550001111.0", [9; 32]).await.unwrap();
    s.put_session("15550001111.0", b"session-bytes").await.unwrap();
    for id in [3u32, 12, 7] {
        s.store_prekey(id, format!("prekey-{id}").as_bytes(), false).await.unwrap();
    }
    s.mark_prekeys_uploaded(&[12, 99]).await.unwrap();
    s.remove_prekey(3).await.unwrap();
    s.store_signed_prekey(2, b"signed-2").await.unwrap();
    s.store_signed_prekey(1, b"signed-1").await.unwrap();
    s.put_sender_key("group@g.us::15550001111", b"sender-key").await.unwrap();

    // App state.
    s.set_sync_key(b"key-1", AppStateSyncKey { key_data: vec![1, 2], fingerprint: vec![3], timestamp: 10 })
        .await
        .unwrap();
    s.set_version("regular", HashState::default()).await.unwrap();
    let mac = |i: u8| AppStateMutationMAC { index_mac: vec![i; 32], value_mac: vec![i + 100; 32] };
    s.put_mutation_macs("regular", 1, &[mac(1), mac(2)]).await.unwrap();
    s.delete_mutation_macs("regular", &[vec![1; 32]]).await.unwrap();

    // Protocol records.
    s.set_sender_key_status("group@g.us", &[("a@s.whatsapp.net", true), ("b@s.whatsapp.net", false)]).await.unwrap();
    s.delete_sender_key_device_rows(&["b@s.whatsapp.net"]).await.unwrap();
    let mapping = LidPnMappingEntry {
        lid: "2040".into(),
        phone_number: "15550001111".into(),
        created_at: 1,
        updated_at: 2,
        learning_source: "usync".into(),
    };
    s.put_lid_mapping(&mapping).await.unwrap();
    s.save_base_key("addr", "msg", b"base").await.unwrap();
    s.put_tc_token("old@s.whatsapp.net", &TcTokenEntry { token: vec![1], token_timestamp: 10, sender_timestamp: None })
        .await
        .unwrap();
    s.put_tc_token(
        "new@s.whatsapp.net",
        &TcTokenEntry { token: vec![2], token_timestamp: 500, sender_timestamp: None },
    )
    .await
    .unwrap();
    s.store_sent_message("chat", "m1", b"payload").await.unwrap();
    let secret = |id: &str, exp: i64, ts: i64| MsgSecretEntry {
        chat: Arc::from("chat"),
        sender: Arc::from("me"),
        msg_id: Arc::from(id),
        secret: [5; 32],
        expires_at: exp,
        message_ts: ts,
    };
    s.put_msg_secrets(vec![secret("keep", 0, 0), secret("old", 100, 0)]).await.unwrap();
    // A redelivery never shortens a window, and a known message time is kept.
    s.put_msg_secrets(vec![secret("old", 50, 77)]).await.unwrap();

    // A restart: a new backend on the same database sees everything.
    drop(s);
    let s = WaStore::new(db.clone(), key(), ACCOUNT);
    assert_eq!(s.load().await.unwrap().unwrap().push_name, "Shop");
    assert_eq!(s.load_identity("15550001111.0").await.unwrap(), Some([9; 32]));
    assert_eq!(s.get_session("15550001111.0").await.unwrap().as_deref(), Some(&b"session-bytes"[..]));
    assert_eq!(s.get_max_prekey_id().await.unwrap(), 12);
    assert!(s.load_prekey(3).await.unwrap().is_none());
    assert_eq!(s.load_prekey(7).await.unwrap().as_deref(), Some(&b"prekey-7"[..]));
    let signed: Vec<u32> = s.load_all_signed_prekeys().await.unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(signed, vec![1, 2]);
    assert_eq!(s.get_sender_key("group@g.us::15550001111").await.unwrap().as_deref(), Some(&b"sender-key"[..]));
    assert_eq!(s.get_sync_key(b"key-1").await.unwrap().unwrap().key_data, vec![1, 2]);
    assert_eq!(s.get_latest_sync_key_id().await.unwrap().as_deref(), Some(&b"key-1"[..]));
    assert!(s.get_mutation_mac("regular", &[1; 32]).await.unwrap().is_none());
    assert_eq!(s.get_mutation_mac("regular", &[2; 32]).await.unwrap(), Some(vec![102; 32]));
    s.clear_mutation_macs("regular").await.unwrap();
    assert!(s.get_mutation_mac("regular", &[2; 32]).await.unwrap().is_none());
    assert_eq!(s.get_sender_key_devices("group@g.us").await.unwrap(), vec![("a@s.whatsapp.net".to_string(), true)]);
    assert_eq!(s.get_pn_mapping("15550001111").await.unwrap().unwrap().lid, "2040");
    assert_eq!(s.get_all_lid_mappings().await.unwrap().len(), 1);
    assert!(s.has_same_base_key("addr", "msg", b"base").await.unwrap());
    assert!(!s.has_same_base_key("addr", "msg", b"other").await.unwrap());
    assert_eq!(s.delete_expired_tc_tokens(100, 100).await.unwrap(), 1);
    assert_eq!(s.get_all_tc_token_jids().await.unwrap(), vec!["new@s.whatsapp.net".to_string()]);
    assert_eq!(s.take_sent_message("chat", "m1").await.unwrap(), Some(b"payload".to_vec()));
    assert_eq!(s.take_sent_message("chat", "m1").await.unwrap(), None, "taken once");
    let old = s.get_msg_secret_with_ts("chat", "me", "old").await.unwrap().unwrap();
    assert_eq!(old.1, 77);
    assert_eq!(s.delete_expired_msg_secrets(60).await.unwrap(), 0, "the later deadline (100) was kept");
    assert_eq!(s.delete_expired_msg_secrets(100).await.unwrap(), 1);
    assert!(s.get_msg_secret("chat", "me", "keep").await.unwrap().is_some(), "0 means never");

    // Messages decrypted but not yet acknowledged (the library's replay buffer).
    s.store_pending_inbound("chat", "sender", "m9", b"stanza").await.unwrap();
    assert_eq!(s.get_pending_inbound("chat", "sender", "m9").await.unwrap(), Some(b"stanza".to_vec()));
    assert_eq!(s.delete_expired_pending_inbound(0).await.unwrap(), 0);
    s.delete_pending_inbound("chat", "sender", "m9").await.unwrap();
    assert!(s.get_pending_inbound("chat", "sender", "m9").await.unwrap().is_none());

    // Sealed at rest: no record in clear, and another key opens nothing.
    let raw = db.kv_list(ACCOUNT, "session").await.unwrap();
    assert!(!raw.iter().any(|(_, v)| v.windows(13).any(|w| w == b"session-bytes")));
    let other = WaStore::new(db.clone(), SessionKey::parse(&"08".repeat(32)).unwrap(), ACCOUNT);
    assert!(other.get_session("15550001111.0").await.is_err());

    // Logged out: everything goes.
    s.wipe().await.unwrap();
    assert!(!s.exists().await.unwrap());
    assert!(s.load_identity("15550001111.0").await.unwrap().is_none());
}

#[tokio::test]
async fn the_session_round_trips_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = Store::connect(&format!("sqlite://{}", dir.path().join("c.db").display()), POOL_SIZE).await.unwrap();
    round_trip(db).await;
}

#[tokio::test]
async fn the_session_round_trips_on_postgres() {
    let db = Store::connect(&Postgres::shared().database("waweb").unwrap(), POOL_SIZE).await.unwrap();
    round_trip(db).await;
}

#[tokio::test]
async fn the_library_starts_on_this_backend() {
    let dir = tempfile::tempdir().unwrap();
    let db = Store::connect(&format!("sqlite://{}", dir.path().join("c.db").display()), POOL_SIZE).await.unwrap();
    let backend = WaStore::new(db.clone(), key(), ACCOUNT);
    // Building creates and loads the device identity through our store (no network).
    let bot = whatsapp_rust::prelude::Bot::builder().with_backend(backend).skip_history_sync().build().await.unwrap();
    drop(bot);
    let again = WaStore::new(db, key(), ACCOUNT);
    let device = again.load().await.unwrap().expect("the device identity was stored");
    assert!(device.registration_id > 0);
}

#[tokio::test]
async fn customer_messages_are_kept_until_the_inbox_has_them() {
    use crmessenger_connector::messenger::Event;
    use crmessenger_connector::messenger::whatsapp_web::{Incoming, inbound_key, to_message};
    let dir = tempfile::tempdir().unwrap();
    let db = Store::connect(&format!("sqlite://{}", dir.path().join("c.db").display()), POOL_SIZE).await.unwrap();
    let s = WaStore::new(db.clone(), key(), ACCOUNT);
    let msg = |id: &str, at_ms: i64| Incoming {
        chat: "15550001111@s.whatsapp.net".into(),
        is_group: false,
        sender: "15550001111@s.whatsapp.net".into(),
        push_name: "Maria".into(),
        id: id.into(),
        at_ms,
        text: Some(format!("text {id}")),
        from_me: false,
    };
    // Stored as the hook stores them (a redelivery lands on the same key), out of order.
    for m in [msg("B", 2_000), msg("A", 1_000), msg("B", 2_000), msg("C", 10_000)] {
        s.put_inbound(&inbound_key(&m), &Event::Message(Box::new(to_message(&m)))).await.unwrap();
    }
    let ids = |rows: &[(String, Event)]| -> Vec<String> {
        rows.iter()
            .map(|(_, e)| match e {
                Event::Message(m) => m.message_id.clone(),
                _ => String::new(),
            })
            .collect()
    };
    let first = s.inbound_after("", 2).await.unwrap();
    assert_eq!(ids(&first), ["A", "B"], "in time order, each once");
    // A restart before the inbox commit: everything is still there.
    let s = WaStore::new(db.clone(), key(), ACCOUNT);
    assert_eq!(ids(&s.inbound_after("", 10).await.unwrap()), ["A", "B", "C"]);
    // Committed up to B: those go, C stays.
    s.inbound_done(&first[1].0).await.unwrap();
    assert_eq!(ids(&s.inbound_after("", 10).await.unwrap()), ["C"]);
}
