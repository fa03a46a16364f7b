//! Sending replies: files uploaded in parts, the `random_id` that makes a
//! repeated send safe, and marking the chat read.

use super::*;

impl Inner {
    /// Uploads a reply's file in parts and says how to attach it.
    pub(super) async fn upload(&self, media: &OutgoingMedia) -> Result<tl::enums::InputMedia, MessengerError> {
        let body = download_reply_file(&self.http, media, self.s.max_media_bytes).await?;
        let file_id = crate::store::random_i64();
        let chunks: Vec<&[u8]> = if body.is_empty() { vec![&[][..]] } else { body.chunks(CHUNK as usize).collect() };
        let parts = chunks.len() as i32;
        let big = body.len() > BIG_FILE;
        for (i, bytes) in chunks.into_iter().enumerate() {
            let (file_part, bytes) = (i as i32, bytes.to_vec());
            let saved = if big {
                let req = tl::functions::upload::SaveBigFilePart { file_id, file_part, file_total_parts: parts, bytes };
                self.call(None, &req).await
            } else {
                self.call(None, &tl::functions::upload::SaveFilePart { file_id, file_part, bytes }).await
            };
            match saved {
                Ok(true) => {}
                Ok(false) => {
                    return Err(MessengerError::Unavailable("Telegram did not save a file part".into()));
                }
                Err(e) => return Err(self.classify(e).await),
            }
        }
        let name = media.file_name.clone();
        let file = if big {
            tl::enums::InputFile::Big(tl::types::InputFileBig { id: file_id, parts, name: name.clone() })
        } else {
            tl::enums::InputFile::File(tl::types::InputFile {
                id: file_id,
                parts,
                name: name.clone(),
                md5_checksum: String::new(),
            })
        };
        if media.kind == "picture" {
            return Ok(tl::enums::InputMedia::UploadedPhoto(tl::types::InputMediaUploadedPhoto {
                spoiler: false,
                live_photo: false,
                file,
                stickers: None,
                ttl_seconds: None,
                video: None,
            }));
        }
        let mut attributes = vec![tl::enums::DocumentAttribute::Filename(tl::types::DocumentAttributeFilename {
            file_name: name.clone(),
        })];
        if media.kind == "voice" {
            attributes.push(tl::enums::DocumentAttribute::Audio(tl::types::DocumentAttributeAudio {
                voice: true,
                duration: 0,
                title: None,
                performer: None,
                waveform: None,
            }));
        }
        Ok(tl::enums::InputMedia::UploadedDocument(tl::types::InputMediaUploadedDocument {
            nosound_video: false,
            force_file: media.kind == "file",
            spoiler: false,
            file,
            thumb: None,
            mime_type: mime_of(&name).into(),
            attributes,
            stickers: None,
            video_cover: None,
            video_timestamp: None,
            ttl_seconds: None,
        }))
    }

    pub(super) async fn send(&self, m: &Outgoing) -> Result<SentRef, MessengerError> {
        self.flood_gate()?;
        let (_, peer) = self.input_peer(&m.chat_id)?;
        if let Some(media) = &m.media {
            let input = self.upload(media).await?;
            let req = tl::functions::messages::SendMedia {
                silent: false,
                background: false,
                clear_draft: false,
                noforwards: false,
                update_stickersets_order: false,
                invert_media: false,
                allow_paid_floodskip: false,
                peer: peer.clone(),
                reply_to: None,
                media: input,
                message: m.text.clone(),
                random_id: m.random_id,
                reply_markup: None,
                entities: None,
                schedule_date: None,
                schedule_repeat_period: None,
                send_as: None,
                quick_reply_shortcut: None,
                effect: None,
                allow_paid_stars: None,
                suggested_post: None,
            };
            let answer = self.call(None, &req).await.map(UpdatesLike::Updates);
            return self.sent(m, &peer, answer).await;
        }
        let req = tl::functions::messages::SendMessage {
            no_webpage: false,
            silent: false,
            background: false,
            clear_draft: false,
            noforwards: false,
            update_stickersets_order: false,
            invert_media: false,
            allow_paid_floodskip: false,
            peer: peer.clone(),
            reply_to: None,
            message: m.text.clone(),
            random_id: m.random_id,
            reply_markup: None,
            entities: None,
            schedule_date: None,
            schedule_repeat_period: None,
            send_as: None,
            quick_reply_shortcut: None,
            effect: None,
            allow_paid_stars: None,
            suggested_post: None,
            rich_message: None,
        };
        let answer = self.call(None, &req).await.map(|updates| match updates {
            tl::enums::Updates::UpdateShortSentMessage(update) => {
                UpdatesLike::ShortSentMessage { request: req.clone(), update }
            }
            other => UpdatesLike::Updates(other),
        });
        self.sent(m, &peer, answer).await
    }

    /// What Telegram's answer to a send means; its updates go to the message box.
    pub(super) async fn sent(
        &self,
        m: &Outgoing,
        peer: &tl::enums::InputPeer,
        answer: Result<UpdatesLike, RpcFailure>,
    ) -> Result<SentRef, MessengerError> {
        let created = |updates: &[tl::enums::Update]| {
            updates.iter().find_map(|x| match x {
                tl::enums::Update::MessageId(i) if i.random_id == m.random_id => Some(i.id),
                _ => None,
            })
        };
        match answer {
            Ok(like) => {
                let id = match &like {
                    UpdatesLike::ShortSentMessage { update, .. } => Some(update.id),
                    UpdatesLike::Updates(tl::enums::Updates::Updates(u)) => created(&u.updates),
                    UpdatesLike::Updates(tl::enums::Updates::Combined(u)) => created(&u.updates),
                    _ => None,
                };
                let _ = self.local.send(like);
                let id =
                    id.ok_or_else(|| MessengerError::InDoubt("Telegram did not say which message it created".into()))?;
                lock(&self.sent).insert(m.random_id, id);
                Ok(SentRef { message_id: id.to_string() })
            }
            Err(e) if e.is("RANDOM_ID_DUPLICATE") => {
                // Sent before (an in-doubt attempt went through): the same message.
                if let Some(id) = lock(&self.sent).get(&m.random_id) {
                    return Ok(SentRef { message_id: id.to_string() });
                }
                tracing::info!(
                    account = self.s.account,
                    chat = m.chat_id,
                    "the reply was already delivered by an earlier attempt"
                );
                Ok(SentRef {
                    message_id: self.find_own(peer, &m.text).await.unwrap_or_else(|| format!("random:{}", m.random_id)),
                })
            }
            Err(RpcFailure::Io(e)) => Err(MessengerError::InDoubt(e)),
            Err(e) => Err(self.classify(e).await),
        }
    }

    /// Our latest outgoing message with this text in the chat's recent history.
    pub(super) async fn find_own(&self, peer: &tl::enums::InputPeer, text: &str) -> Option<String> {
        let (msgs, _, _) = self.history(peer.clone(), 0, 20).await.ok()?;
        msgs.iter().find_map(|m| match m {
            tl::enums::Message::Message(m) if m.out && m.message == text => Some(m.id.to_string()),
            _ => None,
        })
    }
    /// A manager's edit of a reply: `messages.editMessage` (the same text again is
    /// `MESSAGE_NOT_MODIFIED`, which is done already). Its answer goes to the
    /// update feed like any update, where the bridge knows it as its own.
    pub(super) async fn edit(&self, chat_id: &str, message_id: &str, text: &str) -> Result<(), MessengerError> {
        self.flood_gate()?;
        let id: i32 = message_id
            .parse()
            .map_err(|_| MessengerError::Rejected(format!("not a Telegram message id: {message_id}")))?;
        let (_, peer) = self.input_peer(chat_id)?;
        let req = tl::functions::messages::EditMessage {
            no_webpage: false,
            invert_media: false,
            peer,
            id,
            message: Some(text.to_string()),
            media: None,
            reply_markup: None,
            entities: None,
            schedule_date: None,
            schedule_repeat_period: None,
            quick_reply_shortcut_id: None,
            rich_message: None,
        };
        match self.call(None, &req).await {
            Ok(updates) => {
                let _ = self.local.send(UpdatesLike::Updates(updates));
                Ok(())
            }
            Err(RpcFailure::Rpc { name, .. }) if name == "MESSAGE_NOT_MODIFIED" => Ok(()),
            Err(e) => Err(self.classify(e).await),
        }
    }

    pub(super) async fn mark_read(&self, chat_id: &str, message_id: &str) -> Result<(), MessengerError> {
        let Ok(max_id) = message_id.parse::<i32>() else { return Ok(()) };
        let (r, peer) = self.input_peer(chat_id)?;
        let result = if r.id.kind() == PeerKind::Channel {
            let req = tl::functions::channels::ReadHistory { channel: tl::enums::InputChannel::from(&r), max_id };
            self.call(None, &req).await.map(|_| ())
        } else {
            let req = tl::functions::messages::ReadHistory { peer, max_id };
            self.call(None, &req).await.map(|tl::enums::messages::AffectedMessages::Messages(a)| {
                let _ = self.local.send(UpdatesLike::AffectedMessages(a));
            })
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.classify(e).await),
        }
    }
}

/// A MIME type from a file name's extension.
pub(super) fn mime_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "txt" => "text/plain",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}
