//! The amoCRM adapter against the contract-enforcing fake, over TLS with a test CA.

use crmessenger_crm::amocrm::{
    AmoConfig, AmoCrm, ChatsChannel, IdentityFields, OAuthClient, StaticToken, Transport, connect, sign_request,
};
use crmessenger_crm::budget::{Budget, Limit};
use crmessenger_crm::clock::{Clock, SystemClock};
use crmessenger_crm::*;
use crmessenger_fake_amocrm::{ChatsChannel as FakeChannel, FakeAmo, FakeConfig, Fault, FaultKind, TlsIdentity};
use crmessenger_testkit::TestCa;
use std::sync::Arc;
use std::time::Duration;

const SCOPE_SECRET: &str = "channel-secret-for-tests";

struct Setup {
    fake: FakeAmo,
    crm: AmoCrm,
    ca_pem: String,
}

/// A fake over TLS and an adapter for it. With `chats`, the channel is connected to
/// the account first, as an installation does once.
async fn setup(config: FakeConfig, chats: bool) -> Setup {
    let ca = TestCa::new("fake-amocrm-ca").unwrap();
    let cert = ca.issue_server("fake-amocrm", &["127.0.0.1", "localhost"]).unwrap();
    let fake = FakeAmo::start(FakeConfig {
        tls: Some(TlsIdentity { cert_pem: cert.cert_pem, key_pem: cert.key_pem }),
        ..config
    })
    .await
    .unwrap();
    let scope = if chats {
        let amojo_id = fake.config().amojo_id.clone();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let scope =
            connect(&fake.base_url(), "chan-1", SCOPE_SECRET, &amojo_id, "CRMessenger", Some(ca.cert_pem()), clock)
                .await
                .unwrap();
        assert_eq!(scope, format!("chan-1_{amojo_id}"));
        Some(scope)
    } else {
        None
    };
    let crm = adapter(&fake, ca.cert_pem(), scope, Limit::AMOCRM_REST);
    Setup { fake, crm, ca_pem: ca.cert_pem().to_string() }
}

fn adapter(fake: &FakeAmo, ca_pem: &str, scope: Option<String>, limit: Limit) -> AmoCrm {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let token = fake.issue_token_pair().access_token;
    let budget = Budget::in_memory(clock.clone(), "amocrm-rest:test", limit);
    let rest =
        Transport::new(&fake.base_url(), Some(ca_pem), budget, Arc::new(StaticToken(token)), Duration::from_secs(2))
            .unwrap();
    let chats = scope.map(|scope_id| ChatsChannel {
        base_url: fake.base_url(),
        channel_id: "chan-1".into(),
        secret: SCOPE_SECRET.into(),
        scope_id,
        bot_id: "bot-1".into(),
        limit: Limit { rate: 20.0, burst: 1 },
    });
    let config = AmoConfig {
        base_url: fake.base_url(),
        ca_pem: Some(ca_pem.to_string()),
        identity_fields: IdentityFields {
            telegram_user_id: Some(201),
            telegram_username: Some(202),
            whatsapp_id: Some(203),
        },
        reply_prefix: ">>".into(),
        request_timeout: Duration::from_secs(2),
        chats,
        phone_region: crmessenger_crm::phone::DEFAULT_REGION.into(),
        records: Default::default(),
    };
    AmoCrm::new(config, rest, clock).unwrap()
}

fn chats_config() -> FakeConfig {
    FakeConfig {
        chats: Some(FakeChannel {
            channel_id: "chan-1".into(),
            secret: SCOPE_SECRET.into(),
            hook_url: None,
            bot_id: "bot-1".into(),
        }),
        ..FakeConfig::default()
    }
}

fn telegram_person() -> Person {
    Person {
        name: "Ivan Petrov".into(),
        phone: Some("+7 999 123-45-67".into()),
        telegram_user_id: Some(555_001),
        telegram_username: Some("IvanP".into()),
        whatsapp_id: None,
    }
}

fn all_keys() -> Vec<DedupKey> {
    vec![DedupKey::TelegramUserId, DedupKey::TelegramUsername, DedupKey::WhatsappId, DedupKey::Phone]
}

/// The Telegram person's contact and open lead.
async fn contact_and_lead(s: &Setup) -> (ContactRef, LeadRef) {
    let contact = s.crm.find_or_create_contact(&telegram_person(), &all_keys()).await.unwrap();
    let lead = s.crm.find_or_create_lead(&contact, &lead_request()).await.unwrap();
    (contact, lead)
}

fn lead_request() -> LeadRequest {
    LeadRequest {
        name: "Telegram: Ivan Petrov".into(),
        tags: vec!["Telegram".into()],
        reuse_open: true,
        ..LeadRequest::default()
    }
}

#[tokio::test]
async fn a_file_goes_up_in_parts_is_linked_to_the_lead_and_comes_back_byte_for_byte() {
    let s = setup(FakeConfig::default(), false).await;
    let (_, lead) = contact_and_lead(&s).await;
    // 1.2 MB: parts of 524,288, 524,288 and the rest, each to the URL the last gave.
    let bytes: Vec<u8> = (0..1_200_000u32).map(|i| (i % 251) as u8).collect();
    let upload = FileUpload { file_name: "catalogue.pdf".into(), mime_type: "application/pdf".into(), bytes };
    let stored = s.crm.upload_file(&upload).await.unwrap();
    s.crm.link_files(lead.id, std::slice::from_ref(&stored)).await.unwrap();
    s.crm.link_files(lead.id, std::slice::from_ref(&stored)).await.unwrap();
    let snap = s.fake.snapshot();
    let parts = snap.requests.iter().filter(|r| r.path.starts_with("/drive/v1.0/sessions/upload/")).count();
    assert_eq!(parts, 3);
    let f = snap.files.iter().find(|f| f.uuid == stored.uuid).unwrap();
    assert_eq!(
        (f.version_uuid.as_str(), f.leads.as_slice(), f.size),
        (stored.version_uuid.as_str(), &[lead.id][..], 1_200_000)
    );
    let (mime, back) = s.crm.download_file(&stored, 2_000_000).await.unwrap();
    assert_eq!((mime.as_str(), back == upload.bytes), ("application/pdf", true));
    // Over the caller's limit: refused before the download.
    assert!(matches!(s.crm.download_file(&stored, 1_000).await, Err(CrmError::Rejected { status: 413, .. })));

    // The file service's contract, as a client that breaks it sees it.
    let http = crmessenger_crm::tls::client_builder(Some(&s.ca_pem)).unwrap().build().unwrap();
    let token = s.fake.issue_token_pair().access_token;
    let drive = format!("{}/drive", s.fake.base_url());
    let post = |url: String, body: reqwest::Body| http.post(url).bearer_auth(&token).body(body).send();
    let open = |size: u64| {
        let body = serde_json::json!({"file_name": "a.bin", "file_size": size}).to_string();
        post(format!("{drive}/v1.0/sessions"), body.into())
    };
    assert_eq!(open(314_572_801).await.unwrap().status(), 400, "over max_file_size");
    assert_eq!(open(0).await.unwrap().status(), 400, "no size");
    let session: serde_json::Value = open(600_000).await.unwrap().json().await.unwrap();
    let first = session["upload_url"].as_str().unwrap().to_string();
    let short = post(first.clone(), vec![0u8; 1000].into()).await.unwrap();
    assert_eq!(short.status(), 400, "a part before the last is max_part_size");
    let next: serde_json::Value = post(first.clone(), vec![0u8; 524_288].into()).await.unwrap().json().await.unwrap();
    assert_eq!(post(first, vec![0u8; 524_288].into()).await.unwrap().status(), 404, "a spent part URL");
    let next = next["next_url"].as_str().unwrap().to_string();
    assert_eq!(post(next.clone(), vec![0u8; 80_000].into()).await.unwrap().status(), 400, "past file_size");
    let done: serde_json::Value = post(next, vec![0u8; 75_712].into()).await.unwrap().json().await.unwrap();
    assert!(done["uuid"].is_string() && done["version_uuid"].is_string(), "{done}");
    let unauthorized = http.post(format!("{drive}/v1.0/sessions")).body("{}").send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    // Linking or naming a file that does not exist is refused, naming the field.
    let ghost = StoredFile { uuid: "00000000-0000-0000-0000-000000000000".into(), ..stored.clone() };
    match s.crm.link_files(lead.id, &[ghost]).await {
        Err(CrmError::Rejected { status: 400, detail }) => assert!(detail.contains("file_uuid"), "{detail}"),
        other => panic!("expected a 400, got {other:?}"),
    }
}

#[tokio::test]
async fn a_group_lead_links_its_senders_once_and_is_never_a_members_open_lead() {
    let s = setup(FakeConfig::default(), false).await;
    let (anna, group) = contact_and_lead(&s).await;
    let boris = Person { name: "Boris".into(), telegram_user_id: Some(555_002), ..Person::default() };
    let boris = s.crm.find_or_create_contact(&boris, &all_keys()).await.unwrap();
    s.crm.link_contacts(group.id, &[anna.id, boris.id]).await.unwrap();
    s.crm.link_contacts(group.id, &[boris.id]).await.unwrap();
    let lead = s.fake.snapshot().leads.into_iter().find(|l| l.id == group.id).unwrap();
    assert_eq!(lead.contact_ids, vec![anna.id, boris.id], "each contact once, the first still the main one");
    // amoCRM refuses a link to a contact that does not exist, naming the field.
    match s.crm.link_contacts(group.id, &[987_654]).await {
        Err(CrmError::Rejected { status: 400, detail }) => assert!(detail.contains("to_entity_id"), "{detail}"),
        other => panic!("expected a 400, got {other:?}"),
    }
    // Boris writes privately: the group's lead is open and his, but not reused.
    let private = LeadRequest { name: "Telegram: Boris".into(), not_reused: vec![group.id], ..lead_request() };
    let own = s.crm.find_or_create_lead(&boris, &private).await.unwrap();
    assert!(own.created && own.id != group.id);
    let again = s.crm.find_or_create_lead(&boris, &private).await.unwrap();
    assert_eq!((again.id, again.created), (own.id, false), "his private lead is reused");
}

#[tokio::test]
async fn one_person_on_two_messengers_is_one_contact_with_one_open_lead() {
    let s = setup(FakeConfig::default(), false).await;
    let tg = s.crm.find_or_create_contact(&telegram_person(), &all_keys()).await.unwrap();
    assert!(tg.created);
    let lead = s.crm.find_or_create_lead(&tg, &lead_request()).await.unwrap();
    assert!(lead.created);

    // The same person writes from WhatsApp: another name, the phone in another spelling.
    let wa_person = Person {
        name: "Ivan".into(),
        phone: Some("89991234567".into()),
        whatsapp_id: Some("79991234567".into()),
        ..Person::default()
    };
    let wa = s.crm.find_or_create_contact(&wa_person, &all_keys()).await.unwrap();
    assert_eq!((wa.id, wa.created), (tg.id, false));
    let wa_lead =
        s.crm.find_or_create_lead(&wa, &LeadRequest { name: "WhatsApp: Ivan".into(), ..lead_request() }).await.unwrap();
    assert_eq!((wa_lead.id, wa_lead.created), (lead.id, false));

    // Found by phone, the contact learnt its WhatsApp id: the next lookup needs no phone.
    let by_id = Person { whatsapp_id: Some("79991234567".into()), ..Person::default() };
    assert_eq!(s.crm.find_or_create_contact(&by_id, &[DedupKey::WhatsappId]).await.unwrap().id, tg.id);

    let snap = s.fake.snapshot();
    assert_eq!(snap.contacts.len(), 1, "{:#?}", snap.contacts);
    assert_eq!(snap.leads.len(), 1);
    assert_eq!(snap.leads[0].tags, vec!["Telegram".to_string()]);
    assert_eq!(snap.leads[0].contact_ids, vec![tg.id]);
}

#[tokio::test]
async fn a_phone_typed_by_a_manager_is_found_and_a_closed_lead_is_not_reused() {
    let s = setup(FakeConfig::default(), false).await;
    let seeded = s.fake.add_contact(
        "Maria (from the website)",
        serde_json::json!([{ "field_code": "PHONE", "values": [{ "value": "8 (916) 765-43-21", "enum_code": "WORK" }] }]),
    );
    let person = Person {
        name: "Maria".into(),
        phone: Some("+79167654321".into()),
        telegram_user_id: Some(42),
        ..Person::default()
    };
    // The search matches stored text verbatim, so "+79167654321" alone would miss
    // this spelling; the adapter searches the spellings people type.
    let found = s.crm.find_or_create_contact(&person, &all_keys()).await.unwrap();
    assert_eq!((found.id, found.created), (seeded, false));
    assert_eq!(s.fake.snapshot().contacts.len(), 1);

    let first = s.crm.find_or_create_lead(&found, &lead_request()).await.unwrap();
    s.fake.set_lead_status(first.id, 142);
    let second = s.crm.find_or_create_lead(&found, &lead_request()).await.unwrap();
    assert!(second.created && second.id != first.id, "a won lead must not be reused");
}

#[tokio::test]
async fn notes_are_batched_at_250_and_keep_their_order() {
    let s = setup(FakeConfig::default(), false).await;
    let (_, lead) = contact_and_lead(&s).await;
    let notes: Vec<NoteRequest> = (0..300)
        .map(|i| NoteRequest { marker: format!("#tg-1-{i}"), text: format!("Ivan: message {i}\n#tg-1-{i}") })
        .collect();
    let before = s.fake.snapshot().requests.len();
    let written = s.crm.add_notes(lead.id, &notes).await.unwrap();
    assert_eq!(written.len(), 300);
    let snap = s.fake.snapshot();
    let posts =
        snap.requests[before..].iter().filter(|r| r.method == "POST" && r.path == "/api/v4/leads/notes").count();
    assert_eq!(posts, 2, "300 notes should take two requests (250 + 50)");
    let mut on_lead: Vec<_> = snap.notes.iter().filter(|n| n.entity_id == lead.id).collect();
    on_lead.sort_by_key(|n| n.id);
    assert_eq!(on_lead.len(), 300);
    for (i, n) in on_lead.iter().enumerate() {
        assert!(n.params["text"].as_str().unwrap().ends_with(&format!("#tg-1-{i}")));
        assert_eq!(written[i].id, n.id);
    }
}

#[tokio::test]
async fn tasks_are_created_and_completed() {
    let s = setup(FakeConfig::default(), false).await;
    let (_, lead) = contact_and_lead(&s).await;
    let due = SystemClock.now_secs() + 3600;
    let task = s
        .crm
        .add_task(&TaskRequest {
            lead_id: lead.id,
            text: "A customer is waiting".into(),
            complete_till: due,
            responsible_user_id: Some(1002),
        })
        .await
        .unwrap();
    s.crm.complete_task(task.id, "Answered").await.unwrap();
    let snap = s.fake.snapshot();
    let t = snap.tasks.iter().find(|t| t.id == task.id).expect("task exists");
    assert_eq!((t.entity_id, t.complete_till, t.is_completed), (lead.id, due, true));
    assert_eq!(t.responsible_user_id, 1002);
}

#[tokio::test]
async fn replies_are_polled_once_and_re_read_by_id() {
    let s = setup(FakeConfig::default(), false).await;
    let (_, lead) = contact_and_lead(&s).await;
    let start = ReplyCursor { updated_since: SystemClock.now_secs() - 5, seen_at_cursor: vec![] };
    let reply_id = s.fake.add_manager_note(lead.id, 1001, ">> We open at 9, see you!");
    s.fake.add_manager_note(lead.id, 1001, "internal: call him tomorrow");
    let (replies, cursor) = s.crm.poll_replies(&start).await.unwrap();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].text, "We open at 9, see you!");
    assert_eq!((replies[0].lead_id, replies[0].author_id), (lead.id, 1001));
    let (again, _) = s.crm.poll_replies(&cursor).await.unwrap();
    assert!(again.is_empty(), "a reply must be reported once: {again:?}");
    let read = s.crm.read_reply(lead.id, reply_id).await.unwrap().expect("re-read");
    assert_eq!(read.source_id, format!("note:{reply_id}"));
}

#[tokio::test]
async fn the_budget_keeps_requests_under_seven_per_second() {
    // The spacing itself is checked exactly on the budget's own clock (the unit
    // tests in `budget.rs`); arrival times on a busy machine bunch up, so here the
    // outcome: the fake (which counts 7 per second by arrival) refused nothing, and
    // the calls took at least as long as the budget spaces them — a lower bound a
    // slow machine only makes easier to meet, and a missing budget cannot.
    let s = setup(FakeConfig::default(), false).await;
    let started = std::time::Instant::now();
    for i in 0..30 {
        let person = Person { name: format!("p{i}"), telegram_user_id: Some(9000 + i), ..Person::default() };
        s.crm.find_or_create_contact(&person, &[DedupKey::TelegramUserId]).await.unwrap();
    }
    let elapsed = started.elapsed();
    let requests = s.fake.snapshot().requests;
    assert!(requests.len() >= 60, "{} requests", requests.len());
    assert!(!requests.iter().any(|r| r.status == 429), "the fake had to refuse a request");
    let spacing = Duration::from_secs_f64(1.0 / Limit::AMOCRM_REST.rate);
    let least = spacing * (requests.len() as u32 - 1);
    assert!(elapsed >= least, "{} requests in {elapsed:?}: the budget spaces them over {least:?}", requests.len());
}

#[tokio::test]
async fn errors_are_classified() {
    let s = setup(FakeConfig::default(), false).await;
    let person = telegram_person();
    let keys = all_keys();

    s.fake.inject(Fault {
        method: None,
        path_prefix: "/api/v4/contacts".into(),
        kind: FaultKind::Status(429),
        times: 1,
    });
    let e = s.crm.find_or_create_contact(&person, &keys).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");
    assert!(matches!(e, CrmError::RateLimited { retry_after: Some(_) }), "{e:?}");

    s.fake.inject(Fault {
        method: None,
        path_prefix: "/api/v4/contacts".into(),
        kind: FaultKind::Status(503),
        times: 1,
    });
    let e = s.crm.find_or_create_contact(&person, &keys).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Retryable, "{e}");

    let contact = s.crm.find_or_create_contact(&person, &keys).await.unwrap();
    let bad = LeadRequest { pipeline_id: Some(987_654), ..lead_request() };
    let e = s.crm.find_or_create_lead(&contact, &LeadRequest { reuse_open: false, ..bad }).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
    assert!(matches!(e, CrmError::Rejected { status: 400, .. }), "{e:?}");

    s.fake.inject(Fault { method: None, path_prefix: "/api/v4/".into(), kind: FaultKind::Status(403), times: 1 });
    let e = s.crm.find_or_create_contact(&person, &keys).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Fatal, "{e}");
}

#[tokio::test]
async fn repeated_abuse_blocks_the_integration_and_that_is_fatal() {
    // A client with no budget hammers the fake until it answers 403 to everything.
    let s = setup(FakeConfig { abuse_threshold: 3, ..FakeConfig::default() }, false).await;
    let greedy = adapter(&s.fake, &s.ca_pem, None, Limit { rate: 10_000.0, burst: 1000 });
    let mut last = None;
    for i in 0..80 {
        let person = Person { telegram_user_id: Some(i), ..Person::default() };
        if let Err(e) = greedy.find_or_create_contact(&person, &[DedupKey::TelegramUserId]).await {
            last = Some(e);
            if last.as_ref().is_some_and(|e| e.class() == ErrorClass::Fatal) {
                break;
            }
        }
    }
    let e = last.expect("the fake must push back");
    assert!(matches!(e, CrmError::Blocked { status: 403, .. }), "{e:?}");
    assert!(s.fake.snapshot().requests.iter().any(|r| r.status == 429));
}

#[tokio::test]
async fn in_doubt_creates_are_found_instead_of_duplicated() {
    let s = setup(FakeConfig::default(), false).await;
    s.fake.inject(Fault {
        method: Some(http::Method::POST),
        path_prefix: "/api/v4/contacts".into(),
        kind: FaultKind::DropResponse,
        times: 1,
    });
    let contact = s.crm.find_or_create_contact(&telegram_person(), &all_keys()).await.unwrap();
    s.fake.inject(Fault {
        method: Some(http::Method::POST),
        path_prefix: "/api/v4/leads".into(),
        kind: FaultKind::DropResponse,
        times: 1,
    });
    let lead = s.crm.find_or_create_lead(&contact, &LeadRequest { reuse_open: false, ..lead_request() }).await.unwrap();
    s.fake.inject(Fault {
        method: Some(http::Method::POST),
        path_prefix: "/api/v4/leads/notes".into(),
        kind: FaultKind::DropResponse,
        times: 1,
    });
    let notes = vec![
        NoteRequest { marker: "#m1".into(), text: "hello #m1".into() },
        NoteRequest { marker: "#m2".into(), text: "again #m2".into() },
    ];
    let written = s.crm.add_notes(lead.id, &notes).await.unwrap();
    s.fake.inject(Fault {
        method: Some(http::Method::POST),
        path_prefix: "/api/v4/tasks".into(),
        kind: FaultKind::DropResponse,
        times: 1,
    });
    let task = TaskRequest {
        lead_id: lead.id,
        text: "call back".into(),
        complete_till: SystemClock.now_secs() + 600,
        responsible_user_id: None,
    };
    s.crm.add_task(&task).await.unwrap();

    let snap = s.fake.snapshot();
    assert_eq!(snap.contacts.len(), 1, "contact duplicated");
    assert_eq!(snap.leads.len(), 1, "lead duplicated");
    assert_eq!(snap.notes.iter().filter(|n| n.entity_id == lead.id).count(), 2, "notes duplicated");
    assert_eq!(written.len(), 2);
    assert_eq!(snap.tasks.len(), 1, "task duplicated");
}

#[tokio::test]
async fn oauth_refresh_tokens_are_single_use() {
    let s = setup(FakeConfig::default(), false).await;
    let defaults = s.fake.config().clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let oauth = OAuthClient::new(
        &s.fake.base_url(),
        Some(&s.ca_pem),
        &defaults.client_id,
        &defaults.client_secret,
        &defaults.redirect_uri,
        clock.clone(),
    )
    .unwrap();
    let code = s.fake.issue_authorization_code();
    let pair = oauth.exchange_code(&code).await.unwrap();
    assert!(pair.expires_at > clock.now_secs());
    let reused = oauth.exchange_code(&code).await.unwrap_err();
    assert!(matches!(reused, CrmError::ReauthorizationRequired(_)), "{reused:?}");

    let refresh = pair.refresh_token.clone().unwrap();
    let next = oauth.refresh(&refresh).await.unwrap();
    assert_ne!(next.access_token, pair.access_token);
    let spent = oauth.refresh(&refresh).await.unwrap_err();
    assert!(matches!(spent, CrmError::ReauthorizationRequired(_)), "{spent:?}");
    assert_eq!(spent.class(), ErrorClass::Fatal);
    assert_eq!(s.fake.snapshot().refreshes, 1);

    let wrong = OAuthClient::new(
        &s.fake.base_url(),
        Some(&s.ca_pem),
        &defaults.client_id,
        "wrong-secret",
        &defaults.redirect_uri,
        clock,
    )
    .unwrap();
    let e = wrong.refresh(next.refresh_token.as_deref().unwrap()).await.unwrap_err();
    assert!(matches!(e, CrmError::Config(_)), "{e:?}");
}

#[tokio::test]
async fn chats_link_the_contact_before_the_first_message() {
    let s = setup(chats_config(), true).await;
    let post = |i: u32| ChatPost {
        person: telegram_person(),
        contact_id: None,
        dedup: all_keys(),
        conversation_id: "tg-555001".into(),
        user_id: "tg-user-555001".into(),
        message_id: format!("tg-555001-{i}"),
        sent_at_ms: SystemClock.now_ms(),
        text: format!("hello {i}"),
        media: None,
        silent: false,
        author: None,
    };
    let first = s.crm.post_chat_message(&post(1)).await.unwrap();
    let second = s.crm.post_chat_message(&post(2)).await.unwrap();
    assert_eq!(first.chat_id, second.chat_id);
    assert_ne!(first.crm_message_id, second.crm_message_id);
    let snap = s.fake.snapshot();
    assert_eq!(snap.contacts.len(), 1, "amoCRM made a second contact: {:#?}", snap.contacts);
    assert!(snap.unsorted.is_empty(), "amoCRM made an unsorted lead: {:#?}", snap.unsorted);
    assert_eq!(snap.chats.len(), 1);
    assert_eq!(snap.chats[0].contact_id, Some(first.contact_id));
    assert_eq!(snap.chat_messages.len(), 2);

    let reply_id = s.fake.manager_chat_reply("tg-555001", 1001, "Hi Ivan").await.unwrap();
    let history = s.crm.chat_history("tg-555001", 0, 50).await.unwrap();
    let reply = history.iter().find(|h| h.crm_message_id == reply_id).expect("reply in history");
    assert!(reply.from_manager);
    assert_eq!(reply.text, "Hi Ivan");
    s.crm.set_delivery_status(&reply_id, DeliveryStatus::Read).await.unwrap();
    let e = s.crm.set_delivery_status("no-such-message", DeliveryStatus::Delivered).await.unwrap_err();
    assert!(matches!(e, CrmError::Rejected { status: 404, .. }), "{e:?}");
}

#[test]
fn chats_signature_matches_an_independently_computed_vector() {
    use hmac::{Hmac, Mac};
    use md5::{Digest, Md5};
    let body = br#"{"event_type":"new_message"}"#;
    let date = "Mon, 03 Oct 2020 15:11:21 +0000";
    let path = "/v2/origin/custom/chan-1_acc";
    let md5 = hex::encode(Md5::digest(body));
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"secret").unwrap();
    mac.update(format!("POST\n{md5}\napplication/json\n{date}\n{path}").as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    assert_eq!(sign_request("secret", "post", body, date, &format!("{path}?x=1")), (md5, expected));
    // GET bodies are empty: the documented MD5 of "".
    assert_eq!(sign_request("secret", "GET", b"", date, path).0, "d41d8cd98f00b204e9800998ecf8427e");
}

#[tokio::test]
async fn the_account_behind_the_token_is_identified() {
    let s = setup(FakeConfig::default(), false).await;
    let info = s.crm.account().await.unwrap();
    let config = s.fake.config();
    assert_eq!((info.id, info.subdomain.as_str()), (config.account_id, config.subdomain.as_str()));
    assert_eq!(info.amojo_id.as_deref(), Some(config.amojo_id.as_str()));
}

#[tokio::test]
async fn a_429_pauses_the_budget_for_retry_after() {
    let s = setup(FakeConfig::default(), false).await;
    s.fake.inject(Fault {
        method: None,
        path_prefix: "/api/v4/account".into(),
        kind: FaultKind::Status(429),
        times: 1,
    });
    assert!(
        matches!(s.crm.account().await, Err(CrmError::RateLimited { retry_after: Some(d) }) if d == Duration::from_secs(1))
    );
    s.crm.account().await.unwrap();
    let requests = s.fake.snapshot().requests;
    let refused = requests.iter().find(|r| r.status == 429).expect("the 429 is logged");
    let next = requests.iter().find(|r| r.real_ms > refused.real_ms).expect("a request after the 429");
    assert!(
        next.real_ms - refused.real_ms >= 900,
        "the next request came {} ms after the 429",
        next.real_ms - refused.real_ms
    );
}

#[tokio::test]
async fn an_in_doubt_chat_message_is_found_in_the_history_not_sent_twice() {
    let s = setup(chats_config(), true).await;
    let post = ChatPost {
        person: telegram_person(),
        contact_id: None,
        dedup: all_keys(),
        conversation_id: "tg-777".into(),
        user_id: "tg-user-777".into(),
        message_id: "tg-777-1".into(),
        sent_at_ms: SystemClock.now_ms(),
        text: "are you open?".into(),
        media: None,
        silent: false,
        author: None,
    };
    // Create the chat first, so the dropped request is the message itself.
    let first = s.crm.post_chat_message(&ChatPost { message_id: "tg-777-0".into(), ..post.clone() }).await.unwrap();
    let scope = s.fake.scope_id().unwrap();
    s.fake.inject(Fault {
        method: Some(http::Method::POST),
        path_prefix: format!("/v2/origin/custom/{scope}"),
        kind: FaultKind::DropResponse,
        times: 1,
    });
    let second = s.crm.post_chat_message(&post).await.unwrap();
    assert_eq!(second.chat_id, first.chat_id);
    let snap = s.fake.snapshot();
    assert_eq!(snap.chat_messages.iter().filter(|m| m.msgid == "tg-777-1").count(), 1, "sent twice");
    assert_eq!(
        snap.chat_messages.iter().find(|m| m.msgid == "tg-777-1").map(|m| m.id.clone()),
        Some(second.crm_message_id)
    );
}

#[tokio::test]
async fn a_note_webhook_from_amocrm_names_a_reply_that_is_re_read() {
    use axum::{Router, body::Bytes, routing::post};
    let s = setup(FakeConfig::default(), false).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let app = Router::new().route(
        "/hooks/amocrm/token-123",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    s.crm.subscribe_webhook(&format!("http://{addr}/hooks/amocrm/token-123"), &["note_lead"]).await.unwrap();

    let (_, lead) = contact_and_lead(&s).await;
    let note = s.fake.add_manager_note(lead.id, 1002, ">> Your order is ready");
    let body = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a webhook within 10 s").unwrap();
    let hook = crmessenger_crm::amocrm::webhook::parse(&body).unwrap();
    assert_eq!(hook.account_id, Some(s.fake.config().account_id));
    assert_eq!(hook.lead_notes, vec![(lead.id, note)]);
    let reply = s.crm.read_reply(lead.id, note).await.unwrap().expect("the note is a reply");
    assert_eq!((reply.text.as_str(), reply.author_id), ("Your order is ready", 1002));
}

/// A lead amoCRM opened itself (an Unsorted entry) is the contact's lead to adopt:
/// offered even when open leads are not reused, accepted out of Unsorted and
/// placed as asked, never duplicated; a lead of ours is not offered as incoming.
#[tokio::test]
async fn an_incoming_lead_is_adopted_instead_of_a_second_lead() {
    use crmessenger_fake_amocrm::{SECOND_STAGE_ID, UNSORTED_STATUS_ID};
    let s = setup(FakeConfig::default(), false).await;
    let (contact_id, incoming) = s.fake.add_incoming_lead("Ivan Petrov", "+79991234567");
    let contact = s.crm.find_or_create_contact(&telegram_person(), &all_keys()).await.unwrap();
    assert_eq!(contact.id, contact_id, "found by phone");
    let request = LeadRequest {
        reuse_open: false,
        status_id: Some(SECOND_STAGE_ID),
        responsible_user_id: Some(1003),
        ..lead_request()
    };
    let lead = s.crm.open_lead(&contact, &request).await.unwrap().expect("the incoming lead is offered");
    assert_eq!(lead.id, incoming);
    assert!(lead.incoming.is_some());
    s.crm.adopt_lead(&lead, &request).await.unwrap();
    // Adopting again (a retry after a lost answer) changes nothing.
    s.crm.adopt_lead(&lead, &request).await.unwrap();
    let snap = s.fake.snapshot();
    assert!(snap.unsorted.is_empty(), "accepted: {:?}", snap.unsorted);
    assert_eq!(snap.leads.len(), 1);
    let l = &snap.leads[0];
    assert_eq!((l.status_id, l.responsible_user_id, l.name.as_str()), (SECOND_STAGE_ID, 1003, "Telegram: Ivan Petrov"));
    assert_ne!(l.status_id, UNSORTED_STATUS_ID);
    assert_eq!(l.tags, vec!["Telegram".to_string()]);
    // Now an ordinary lead: offered only when open leads are reused, not as incoming.
    assert_eq!(s.crm.open_lead(&contact, &request).await.unwrap(), None);
    let again = s.crm.open_lead(&contact, &lead_request()).await.unwrap().unwrap();
    assert_eq!((again.id, again.incoming), (incoming, None));
}

/// The identity fields are found by their codes or created once; a token that
/// may not create fields gets the list of fields to make instead.
#[tokio::test]
async fn identity_fields_are_created_once_or_named_for_an_administrator() {
    use crmessenger_crm::amocrm::identity::{self, Outcome};
    let s = setup(FakeConfig { identity_fields: false, ..FakeConfig::default() }, false).await;
    let rest = || {
        let budget = Budget::in_memory(Arc::new(SystemClock), "fields", Limit::AMOCRM_REST);
        let token = Arc::new(StaticToken(s.fake.issue_token_pair().access_token));
        Transport::new(&s.fake.base_url(), Some(&s.ca_pem), budget, token, Duration::from_secs(2)).unwrap()
    };
    let Outcome::Ready(first) = identity::ensure(&rest()).await.unwrap() else {
        panic!("an admin's token creates them")
    };
    let Outcome::Ready(second) = identity::ensure(&rest()).await.unwrap() else { panic!("found again") };
    assert_eq!(first, second, "found by code the second time, not created again");
    assert_eq!(s.fake.snapshot_contact_fields().iter().filter(|(_, c)| c.starts_with("CRMESSENGER_")).count(), 3);

    let m = setup(FakeConfig { identity_fields: false, token_is_admin: false, ..FakeConfig::default() }, false).await;
    let budget = Budget::in_memory(Arc::new(SystemClock), "fields", Limit::AMOCRM_REST);
    let token = Arc::new(StaticToken(m.fake.issue_token_pair().access_token));
    let rest = Transport::new(&m.fake.base_url(), Some(&m.ca_pem), budget, token, Duration::from_secs(2)).unwrap();
    let Outcome::AdminRequired(missing) = identity::ensure(&rest).await.unwrap() else { panic!("not an admin") };
    assert_eq!(missing.len(), 3);
}

/// The CRM's user list says who is deactivated.
#[tokio::test]
async fn deactivated_users_are_not_active() {
    let s = setup(FakeConfig::default(), false).await;
    assert_eq!(s.crm.active_users().await.unwrap(), vec![1001, 1002, 1003]);
    s.fake.deactivate_user(1002);
    assert_eq!(s.crm.active_users().await.unwrap(), vec![1001, 1003]);
}
