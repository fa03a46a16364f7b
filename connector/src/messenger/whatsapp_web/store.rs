//! whatsapp-rust's storage backend over the connector's database: every Signal,
//! app-state and protocol record is one row of the `kv` table, sealed with the
//! session key (the row's account, namespace and key as associated data), on
//! PostgreSQL or SQLite alike. The library's own SQLite storage is not used: it
//! links another libsqlite3 than sqlx.

use crate::store::Store;
use crate::store::crypto::SessionKey;
use serde::Serialize;
use serde::de::DeserializeOwned;
use whatsapp_rust::async_trait;
use whatsapp_rust::bytes::Bytes;
use whatsapp_rust::wacore::appstate::hash::HashState;
use whatsapp_rust::wacore::appstate::processor::AppStateMutationMAC;
use whatsapp_rust::wacore::store::Device;
use whatsapp_rust::wacore::store::error::{Result, StoreError};
use whatsapp_rust::wacore::store::traits::{
    AppStateSyncKey, AppSyncStore, DeviceListRecord, DeviceStore, LidPnMappingEntry, MsgSecretEntry, MsgSecretStore,
    ProtocolStore, SignalStore, TcTokenEntry, merge_msg_secret_expiry, merge_msg_secret_message_ts,
};

/// The backend of one account.
pub struct WaStore {
    store: Store,
    key: SessionKey,
    account: String,
}

fn db(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Database(Box::new(e))
}

fn codec(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Serialization(Box::new(e))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Ids as fixed-width keys, so keys sort as numbers.
fn id_key(id: u32) -> String {
    format!("{id:010}")
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Sealing(String);

impl WaStore {
    /// The backend of `account`.
    pub fn new(store: Store, key: SessionKey, account: &str) -> Self {
        Self { store, key, account: account.to_string() }
    }

    fn aad(&self, ns: &str, k: &str) -> String {
        format!("{}|{ns}|{k}", self.account)
    }

    async fn get(&self, ns: &str, k: &str) -> Result<Option<Vec<u8>>> {
        let Some(v) = self.store.kv_get(&self.account, ns, k).await.map_err(db)? else { return Ok(None) };
        self.open(ns, k, &v).map(Some)
    }

    fn open(&self, ns: &str, k: &str, v: &[u8]) -> Result<Vec<u8>> {
        if v.len() < 12 {
            return Err(StoreError::Validation(format!("{ns}/{k}: a truncated row")));
        }
        self.key.open(&self.aad(ns, k), &v[..12], &v[12..]).map_err(|e| codec(Sealing(e)))
    }

    async fn put(&self, ns: &str, k: &str, plain: &[u8]) -> Result<()> {
        let (nonce, ct) = self.key.seal(&self.aad(ns, k), plain).map_err(|e| codec(Sealing(e)))?;
        let mut v = nonce;
        v.extend_from_slice(&ct);
        self.store.kv_put(&self.account, ns, k, &v).await.map_err(db)
    }

    async fn del(&self, ns: &str, k: &str) -> Result<()> {
        self.store.kv_delete(&self.account, ns, k).await.map_err(db)
    }

    async fn list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = self.store.kv_list(&self.account, ns).await.map_err(db)?;
        rows.into_iter().map(|(k, v)| Ok((k.clone(), self.open(ns, &k, &v)?))).collect()
    }

    async fn clear(&self, ns: &str) -> Result<()> {
        self.store.kv_clear(&self.account, Some(ns)).await.map_err(db)
    }

    async fn get_json<T: DeserializeOwned>(&self, ns: &str, k: &str) -> Result<Option<T>> {
        match self.get(ns, k).await? {
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(codec),
            None => Ok(None),
        }
    }

    async fn put_json<T: Serialize>(&self, ns: &str, k: &str, value: &T) -> Result<()> {
        self.put(ns, k, &serde_json::to_vec(value).map_err(codec)?).await
    }

    /// The database.
    pub fn db(&self) -> &Store {
        &self.store
    }

    /// Stores a customer's message until the bridge has it (the key orders by time
    /// and names the message, so a redelivery is stored once).
    pub async fn put_inbound(&self, key: &str, event: &crate::messenger::Event) -> Result<()> {
        self.put_json("inbound", key, event).await
    }

    /// Stored messages after `after` (a key), oldest first.
    pub async fn inbound_after(&self, after: &str, limit: usize) -> Result<Vec<(String, crate::messenger::Event)>> {
        let rows = self.store.kv_list(&self.account, "inbound").await.map_err(db)?;
        rows.into_iter()
            .filter(|(k, _)| k.as_str() > after)
            .take(limit)
            .map(|(k, v)| {
                let plain = self.open("inbound", &k, &v)?;
                Ok((k, serde_json::from_slice(&plain).map_err(codec)?))
            })
            .collect()
    }

    /// Forgets stored messages up to `upto` (the bridge committed them).
    pub async fn inbound_done(&self, upto: &str) -> Result<()> {
        for (k, _) in self.store.kv_list(&self.account, "inbound").await.map_err(db)? {
            if k.as_str() <= upto {
                self.del("inbound", &k).await?;
            }
        }
        Ok(())
    }

    /// Forgets the whole session (logged out, or the account deleted).
    pub async fn wipe(&self) -> Result<()> {
        self.store.kv_clear(&self.account, None).await.map_err(db)
    }
}

/// A prekey with whether it was uploaded.
#[derive(serde::Serialize, serde::Deserialize)]
struct PreKey {
    record: Vec<u8>,
    uploaded: bool,
}

/// A sent message kept for retries, with when it was stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct SentPayload {
    at: i64,
    payload: Vec<u8>,
}

/// A message secret with its expiry and the message's time.
#[derive(serde::Serialize, serde::Deserialize)]
struct Secret {
    secret: Vec<u8>,
    expires_at: i64,
    message_ts: i64,
}

#[async_trait]
impl SignalStore for WaStore {
    async fn put_identity(&self, address: &str, key: [u8; 32]) -> Result<()> {
        self.put("identity", address, &key).await
    }
    async fn load_identity(&self, address: &str) -> Result<Option<[u8; 32]>> {
        match self.get("identity", address).await? {
            Some(b) => {
                b.try_into().map(Some).map_err(|_| StoreError::Validation(format!("identity {address}: not 32 bytes")))
            }
            None => Ok(None),
        }
    }
    async fn delete_identity(&self, address: &str) -> Result<()> {
        self.del("identity", address).await
    }
    async fn get_session(&self, address: &str) -> Result<Option<Bytes>> {
        Ok(self.get("session", address).await?.map(Bytes::from))
    }
    async fn put_session(&self, address: &str, session: &[u8]) -> Result<()> {
        self.put("session", address, session).await
    }
    async fn delete_session(&self, address: &str) -> Result<()> {
        self.del("session", address).await
    }
    async fn store_prekey(&self, id: u32, record: &[u8], uploaded: bool) -> Result<()> {
        self.put_json("prekey", &id_key(id), &PreKey { record: record.to_vec(), uploaded }).await
    }
    async fn load_prekey(&self, id: u32) -> Result<Option<Bytes>> {
        Ok(self.get_json::<PreKey>("prekey", &id_key(id)).await?.map(|p| Bytes::from(p.record)))
    }
    async fn mark_prekeys_uploaded(&self, ids: &[u32]) -> Result<()> {
        for id in ids {
            if let Some(mut p) = self.get_json::<PreKey>("prekey", &id_key(*id)).await? {
                p.uploaded = true;
                self.put_json("prekey", &id_key(*id), &p).await?;
            }
        }
        Ok(())
    }
    async fn remove_prekey(&self, id: u32) -> Result<()> {
        self.del("prekey", &id_key(id)).await
    }
    async fn get_max_prekey_id(&self) -> Result<u32> {
        let keys = self.store.kv_list(&self.account, "prekey").await.map_err(db)?;
        Ok(keys.iter().filter_map(|(k, _)| k.parse::<u32>().ok()).max().unwrap_or(0))
    }
    async fn store_signed_prekey(&self, id: u32, record: &[u8]) -> Result<()> {
        self.put("signed-prekey", &id_key(id), record).await
    }
    async fn load_signed_prekey(&self, id: u32) -> Result<Option<Vec<u8>>> {
        self.get("signed-prekey", &id_key(id)).await
    }
    async fn load_all_signed_prekeys(&self) -> Result<Vec<(u32, Vec<u8>)>> {
        let rows = self.list("signed-prekey").await?;
        Ok(rows.into_iter().filter_map(|(k, v)| Some((k.parse().ok()?, v))).collect())
    }
    async fn remove_signed_prekey(&self, id: u32) -> Result<()> {
        self.del("signed-prekey", &id_key(id)).await
    }
    async fn put_sender_key(&self, address: &str, record: &[u8]) -> Result<()> {
        self.put("sender-key", address, record).await
    }
    async fn get_sender_key(&self, address: &str) -> Result<Option<Vec<u8>>> {
        self.get("sender-key", address).await
    }
    async fn delete_sender_key(&self, address: &str) -> Result<()> {
        self.del("sender-key", address).await
    }
}

#[async_trait]
impl AppSyncStore for WaStore {
    async fn get_sync_key(&self, key_id: &[u8]) -> Result<Option<AppStateSyncKey>> {
        self.get_json("sync-key", &hex::encode(key_id)).await
    }
    async fn set_sync_key(&self, key_id: &[u8], key: AppStateSyncKey) -> Result<()> {
        self.put_json("sync-key", &hex::encode(key_id), &key).await?;
        self.put("sync-key-latest", "id", key_id).await
    }
    async fn get_version(&self, name: &str) -> Result<HashState> {
        Ok(self.get_json("app-version", name).await?.unwrap_or_default())
    }
    async fn set_version(&self, name: &str, state: HashState) -> Result<()> {
        self.put_json("app-version", name, &state).await
    }
    async fn put_mutation_macs(&self, name: &str, _version: u64, mutations: &[AppStateMutationMAC]) -> Result<()> {
        let ns = format!("macs:{name}");
        for m in mutations {
            self.put(&ns, &hex::encode(&m.index_mac), &m.value_mac).await?;
        }
        Ok(())
    }
    async fn get_mutation_mac(&self, name: &str, index_mac: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get(&format!("macs:{name}"), &hex::encode(index_mac)).await
    }
    async fn delete_mutation_macs(&self, name: &str, index_macs: &[Vec<u8>]) -> Result<()> {
        let ns = format!("macs:{name}");
        for m in index_macs {
            self.del(&ns, &hex::encode(m)).await?;
        }
        Ok(())
    }
    async fn clear_mutation_macs(&self, name: &str) -> Result<()> {
        self.clear(&format!("macs:{name}")).await
    }
    async fn get_latest_sync_key_id(&self) -> Result<Option<Vec<u8>>> {
        self.get("sync-key-latest", "id").await
    }
}

#[async_trait]
impl ProtocolStore for WaStore {
    async fn get_sender_key_devices(&self, group_jid: &str) -> Result<Vec<(String, bool)>> {
        Ok(self.get_json("skd", group_jid).await?.unwrap_or_default())
    }
    async fn set_sender_key_status(&self, group_jid: &str, entries: &[(&str, bool)]) -> Result<()> {
        let mut known: Vec<(String, bool)> = self.get_sender_key_devices(group_jid).await?;
        for (device, has) in entries {
            match known.iter_mut().find(|(d, _)| d == device) {
                Some(e) => e.1 = *has,
                None => known.push((device.to_string(), *has)),
            }
        }
        self.put_json("skd", group_jid, &known).await
    }
    async fn clear_sender_key_devices(&self, group_jid: &str) -> Result<()> {
        self.del("skd", group_jid).await
    }
    async fn delete_sender_key_device_rows(&self, device_jids: &[&str]) -> Result<()> {
        for (group, v) in self.list("skd").await? {
            let mut known: Vec<(String, bool)> = serde_json::from_slice(&v).map_err(codec)?;
            let before = known.len();
            known.retain(|(d, _)| !device_jids.contains(&d.as_str()));
            if known.len() != before {
                self.put_json("skd", &group, &known).await?;
            }
        }
        Ok(())
    }
    async fn clear_all_sender_key_devices(&self) -> Result<()> {
        self.clear("skd").await
    }
    async fn get_lid_mapping(&self, lid: &str) -> Result<Option<LidPnMappingEntry>> {
        self.get_json("lid", lid).await
    }
    async fn get_pn_mapping(&self, phone: &str) -> Result<Option<LidPnMappingEntry>> {
        let Some(lid) = self.get("pn", phone).await? else { return Ok(None) };
        self.get_lid_mapping(&String::from_utf8_lossy(&lid)).await
    }
    async fn put_lid_mapping(&self, entry: &LidPnMappingEntry) -> Result<()> {
        self.put_json("lid", &entry.lid, entry).await?;
        self.put("pn", &entry.phone_number, entry.lid.as_bytes()).await
    }
    async fn get_all_lid_mappings(&self) -> Result<Vec<LidPnMappingEntry>> {
        self.list("lid").await?.into_iter().map(|(_, v)| serde_json::from_slice(&v).map_err(codec)).collect()
    }
    async fn save_base_key(&self, address: &str, message_id: &str, base_key: &[u8]) -> Result<()> {
        self.put("base-key", &format!("{address}|{message_id}"), base_key).await
    }
    async fn has_same_base_key(&self, address: &str, message_id: &str, current_base_key: &[u8]) -> Result<bool> {
        Ok(self.get("base-key", &format!("{address}|{message_id}")).await?.as_deref() == Some(current_base_key))
    }
    async fn delete_base_key(&self, address: &str, message_id: &str) -> Result<()> {
        self.del("base-key", &format!("{address}|{message_id}")).await
    }
    async fn update_device_list(&self, record: DeviceListRecord) -> Result<()> {
        self.put_json("devices", &record.user.clone(), &record).await
    }
    async fn get_devices(&self, user: &str) -> Result<Option<DeviceListRecord>> {
        self.get_json("devices", user).await
    }
    async fn delete_devices(&self, user: &str) -> Result<()> {
        self.del("devices", user).await
    }
    async fn get_tc_token(&self, jid: &str) -> Result<Option<TcTokenEntry>> {
        self.get_json("tc-token", jid).await
    }
    async fn put_tc_token(&self, jid: &str, entry: &TcTokenEntry) -> Result<()> {
        self.put_json("tc-token", jid, entry).await
    }
    async fn delete_tc_token(&self, jid: &str) -> Result<()> {
        self.del("tc-token", jid).await
    }
    async fn get_all_tc_token_jids(&self) -> Result<Vec<String>> {
        Ok(self.store.kv_list(&self.account, "tc-token").await.map_err(db)?.into_iter().map(|(k, _)| k).collect())
    }
    async fn delete_expired_tc_tokens(&self, token_cutoff: i64, sender_cutoff: i64) -> Result<u32> {
        let mut gone = 0;
        for (jid, v) in self.list("tc-token").await? {
            let e: TcTokenEntry = serde_json::from_slice(&v).map_err(codec)?;
            let token_live = !e.token.is_empty() && e.token_timestamp >= token_cutoff;
            let sender_live = e.sender_timestamp.is_some_and(|t| t >= sender_cutoff);
            if !token_live && !sender_live {
                self.del("tc-token", &jid).await?;
                gone += 1;
            }
        }
        Ok(gone)
    }
    async fn store_sent_message(&self, chat_jid: &str, message_id: &str, payload: &[u8]) -> Result<()> {
        let sent = SentPayload { at: now_secs(), payload: payload.to_vec() };
        self.put_json("sent", &format!("{chat_jid}|{message_id}"), &sent).await
    }
    async fn take_sent_message(&self, chat_jid: &str, message_id: &str) -> Result<Option<Vec<u8>>> {
        let k = format!("{chat_jid}|{message_id}");
        let found: Option<SentPayload> = self.get_json("sent", &k).await?;
        if found.is_some() {
            self.del("sent", &k).await?;
        }
        Ok(found.map(|s| s.payload))
    }
    async fn store_pending_inbound(&self, chat: &str, sender: &str, id: &str, message: &[u8]) -> Result<()> {
        let sent = SentPayload { at: now_secs(), payload: message.to_vec() };
        self.put_json("pending-in", &format!("{chat}|{sender}|{id}"), &sent).await
    }
    async fn get_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_json::<SentPayload>("pending-in", &format!("{chat}|{sender}|{id}")).await?.map(|p| p.payload))
    }
    async fn delete_pending_inbound(&self, chat: &str, sender: &str, id: &str) -> Result<()> {
        self.del("pending-in", &format!("{chat}|{sender}|{id}")).await
    }
    async fn delete_expired_pending_inbound(&self, cutoff_timestamp: i64) -> Result<u32> {
        let mut gone = 0;
        for (k, v) in self.list("pending-in").await? {
            let p: SentPayload = serde_json::from_slice(&v).map_err(codec)?;
            if p.at < cutoff_timestamp {
                self.del("pending-in", &k).await?;
                gone += 1;
            }
        }
        Ok(gone)
    }
    async fn delete_expired_sent_messages(&self, cutoff_timestamp: i64) -> Result<u32> {
        let mut gone = 0;
        for (k, v) in self.list("sent").await? {
            let s: SentPayload = serde_json::from_slice(&v).map_err(codec)?;
            if s.at < cutoff_timestamp {
                self.del("sent", &k).await?;
                gone += 1;
            }
        }
        Ok(gone)
    }
}

#[async_trait]
impl MsgSecretStore for WaStore {
    async fn put_msg_secrets(&self, entries: Vec<MsgSecretEntry>) -> Result<usize> {
        let n = entries.len();
        for e in entries {
            let k = format!("{}|{}|{}", e.chat, e.sender, e.msg_id);
            let merged = match self.get_json::<Secret>("msg-secret", &k).await? {
                Some(old) => Secret {
                    secret: e.secret.to_vec(),
                    expires_at: merge_msg_secret_expiry(old.expires_at, e.expires_at),
                    message_ts: merge_msg_secret_message_ts(old.message_ts, e.message_ts),
                },
                None => Secret { secret: e.secret.to_vec(), expires_at: e.expires_at, message_ts: e.message_ts },
            };
            self.put_json("msg-secret", &k, &merged).await?;
        }
        Ok(n)
    }
    async fn get_msg_secret(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_msg_secret_with_ts(chat, sender, msg_id).await?.map(|(s, _)| s))
    }
    async fn get_msg_secret_with_ts(&self, chat: &str, sender: &str, msg_id: &str) -> Result<Option<(Vec<u8>, i64)>> {
        let s: Option<Secret> = self.get_json("msg-secret", &format!("{chat}|{sender}|{msg_id}")).await?;
        Ok(s.map(|s| (s.secret, s.message_ts)))
    }
    async fn delete_expired_msg_secrets(&self, cutoff_timestamp: i64) -> Result<u32> {
        let mut gone = 0;
        for (k, v) in self.list("msg-secret").await? {
            let s: Secret = serde_json::from_slice(&v).map_err(codec)?;
            if s.expires_at != 0 && s.expires_at <= cutoff_timestamp {
                self.del("msg-secret", &k).await?;
                gone += 1;
            }
        }
        Ok(gone)
    }
}

#[async_trait]
impl DeviceStore for WaStore {
    async fn save(&self, device: &Device) -> Result<()> {
        self.put_json("device", "self", device).await
    }
    async fn load(&self) -> Result<Option<Device>> {
        self.get_json("device", "self").await
    }
    async fn exists(&self) -> Result<bool> {
        Ok(self.store.kv_get(&self.account, "device", "self").await.map_err(db)?.is_some())
    }
    async fn create(&self) -> Result<i32> {
        if !self.exists().await? {
            self.save(&Device::new()).await?;
        }
        Ok(1)
    }
}
