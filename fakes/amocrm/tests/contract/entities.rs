//! Leads, complex leads, notes, tasks, webhooks and account data.

use crmessenger_fake_amocrm::{FIRST_STAGE_ID, FakeConfig, MAIN_PIPELINE_ID, WON_STATUS_ID};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Env, start};

/// Posts `[item]` to `path`, expects a 400, and returns the path of the first field error.
async fn first_error(env: &Env, path: &str, item: Value) -> String {
    let (status, err) = env.post_json(path, &json!([item])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    err["validation-errors"][0]["errors"][0]["path"].as_str().unwrap_or("").to_string()
}

async fn fast() -> Env {
    start(FakeConfig { rate_limit_per_sec: 1000, ..FakeConfig::default() }).await
}

#[tokio::test]
async fn account_data_describes_users_pipeline_and_contact_fields() {
    let env = fast().await;
    let (status, users) = env.get_json("/api/v4/users?with=amojo_id").await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<i64> =
        users["_embedded"]["users"].as_array().expect("users").iter().map(|u| u["id"].as_i64().expect("id")).collect();
    assert_eq!(ids, [1001, 1002, 1003]);
    assert!(users["_embedded"]["users"][0]["amojo_id"].is_string());
    let (_, p) = env.get_json("/api/v4/leads/pipelines").await;
    let pipeline = &p["_embedded"]["pipelines"][0];
    assert_eq!(pipeline["is_main"], true);
    let statuses = pipeline["_embedded"]["statuses"].as_array().expect("statuses");
    assert_eq!(statuses[0]["type"], 1, "Unsorted comes first");
    assert!(statuses.iter().any(|s| s["id"] == 142) && statuses.iter().any(|s| s["id"] == 143));
    let (_, f) = env.get_json("/api/v4/contacts/custom_fields").await;
    let fields = f["_embedded"]["custom_fields"].as_array().expect("fields");
    let phone = fields.iter().find(|x| x["code"] == "PHONE").expect("PHONE");
    assert_eq!(phone["id"], 100);
    assert!(phone["enums"].as_array().expect("enums").iter().any(|e| e["value"] == "MOB"));
    assert!(fields.iter().any(|x| x["id"] == 201 && x["name"] == "Telegram ID"));
}

#[tokio::test]
async fn leads_link_contacts_validate_stages_and_update_status() {
    let env = fast().await;
    let contact = env.fake.add_contact("Клиент", json!(null));
    let unknown_contact = json!({"name": "x", "_embedded": {"contacts": [{"id": 424242}]}});
    assert_eq!(first_error(&env, "/api/v4/leads", unknown_contact).await, "_embedded.contacts.0.id");
    let unknown_status = json!({"name": "x", "status_id": 5});
    assert_eq!(first_error(&env, "/api/v4/leads", unknown_status).await, "status_id");

    let lead_id = env
        .create(
            "leads",
            json!({"name": "TG: Клиент", "_embedded": {"contacts": [{"id": contact}], "tags": [{"name": "telegram"}]}}),
        )
        .await;
    let (_, lead) = env.get_json(&format!("/api/v4/leads/{lead_id}?with=contacts")).await;
    assert_eq!(lead["status_id"], FIRST_STAGE_ID);
    assert_eq!(lead["pipeline_id"], MAIN_PIPELINE_ID);
    assert_eq!(lead["_embedded"]["contacts"][0]["id"], contact);
    assert_eq!(lead["_embedded"]["tags"][0]["name"], "telegram");
    let (_, c) = env.get_json(&format!("/api/v4/contacts/{contact}?with=leads")).await;
    assert_eq!(c["_embedded"]["leads"][0]["id"], lead_id);

    let (status, _) =
        env.send_json(Method::PATCH, &format!("/api/v4/leads/{lead_id}"), &json!({"status_id": WON_STATUS_ID})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.fake.snapshot().leads[0].status_id, WON_STATUS_ID);
    let (_, list) = env.get_json(&format!("/api/v4/leads?filter[id][]={lead_id}")).await;
    assert_eq!(list["_embedded"]["leads"][0]["status_id"], WON_STATUS_ID);
    assert_eq!(env.get("/api/v4/leads/987654").await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn complex_leads_enforce_limits_and_report_merges_under_duplicate_control() {
    let env = start(FakeConfig { duplicate_control: true, rate_limit_per_sec: 1000, ..FakeConfig::default() }).await;
    let existing =
        env.fake.add_contact("Old", json!([{"field_code": "PHONE", "values": [{"value": "+7 (999) 000-11-22"}]}]));
    let two_contacts = json!([{"name": "L", "_embedded": {"contacts": [{"name": "a"}, {"name": "b"}]}}]);
    let (status, _) = env.post_json("/api/v4/leads/complex", &two_contacts).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let fifty_one: Vec<Value> = (0..51).map(|i| json!({"name": format!("L{i}")})).collect();
    let (status, _) = env.post_json("/api/v4/leads/complex", &Value::Array(fifty_one)).await;
    assert!(status.is_client_error());
    let many_cf: Vec<Value> = (0..41).map(|_| json!({"field_code": "EMAIL", "values": [{"value": "a@b.c"}]})).collect();
    let (status, _) = env
        .post_json(
            "/api/v4/leads/complex",
            &json!([{"name": "L", "_embedded": {"contacts": [{"name": "x", "custom_fields_values": many_cf}]}}]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, reply) = env
        .post_json(
            "/api/v4/leads/complex",
            &json!([
                {"name": "dup", "_embedded": {"contacts": [{"name": "New", "custom_fields_values": [
                    {"field_code": "PHONE", "values": [{"value": "79990001122", "enum_code": "MOB"}]}]}]}},
                {"name": "fresh", "request_id": "r1", "_embedded": {"contacts": [{"name": "Other"}]}}
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply[0]["merged"], true);
    assert_eq!(reply[0]["contact_id"], existing);
    assert_eq!(reply[1]["merged"], false);
    assert_eq!(reply[1]["request_id"], json!(["r1"]));
    assert_eq!(env.fake.snapshot().contacts.len(), 2);
}

#[tokio::test]
async fn notes_require_entity_and_known_type_and_filter_by_updated_at() {
    let env = fast().await;
    let lead = env.create("leads", json!({"name": "L"})).await;
    let common = json!({"note_type": "common", "params": {"text": "x"}});
    assert_eq!(first_error(&env, "/api/v4/leads/notes", common.clone()).await, "entity_id");
    let whisper = json!({"entity_id": lead, "note_type": "whisper", "params": {"text": "x"}});
    assert_eq!(first_error(&env, "/api/v4/leads/notes", whisper).await, "note_type");
    let no_service = json!({"note_type": "service_message", "params": {"text": "x"}});
    assert_eq!(first_error(&env, &format!("/api/v4/leads/{lead}/notes"), no_service).await, "params.service");
    let (status, _) = env.post_json("/api/v4/leads/424242/notes", &json!([common])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, first) = env
        .post_json(
            "/api/v4/leads/notes",
            &json!([{"entity_id": lead, "note_type": "common", "params": {"text": "one"}}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["_embedded"]["notes"][0]["request_id"], "0");
    let t0 = env.fake.clock().now_secs();
    env.fake.clock().advance(std::time::Duration::from_secs(10));
    let second = env.fake.add_manager_note(lead, 1003, "two");
    let (_, after) = env.get_json(&format!("/api/v4/leads/notes?filter[updated_at]={t0}")).await;
    let notes = after["_embedded"]["notes"].as_array().expect("notes");
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0]["id"], second);
    let (_, desc) = env.get_json(&format!("/api/v4/leads/{lead}/notes?order[updated_at]=desc")).await;
    assert_eq!(desc["_embedded"]["notes"][0]["params"]["text"], "two");
    let later = t0 + 3600;
    assert_eq!(
        env.get(&format!("/api/v4/leads/notes?filter[updated_at][from]={later}")).await.status(),
        StatusCode::NO_CONTENT
    );
    let (status, one) = env.get_json(&format!("/api/v4/leads/notes/{second}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["created_by"], 1003);
}

#[tokio::test]
async fn tasks_are_created_completed_and_filtered() {
    let env = fast().await;
    let lead = env.create("leads", json!({"name": "L"})).await;
    let task = env
        .create(
            "tasks",
            json!({"text": "Reply", "complete_till": 1_900_000_000_i64,
                   "entity_type": "leads", "entity_id": lead, "responsible_user_id": 1002}),
        )
        .await;
    let open = format!("/api/v4/tasks?filter[entity_type]=leads&filter[entity_id][]={lead}&filter[is_completed]=0");
    let (status, list) = env.get_json(&open).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["_embedded"]["tasks"][0]["id"], task);
    let (status, _) = env
        .send_json(
            Method::PATCH,
            &format!("/api/v4/tasks/{task}"),
            &json!({"is_completed": true, "result": {"text": "done"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.get(&open).await.status(), StatusCode::NO_CONTENT);
    let snap = env.fake.snapshot();
    assert!(snap.tasks[0].is_completed);
    assert_eq!(snap.tasks[0].result_text.as_deref(), Some("done"));
}

#[tokio::test]
async fn webhook_subscriptions_update_by_destination_and_delete() {
    let env = fast().await;
    let dest = "https://hooks.example.test/amo?t=1";
    for settings in [json!(["note_lead"]), json!(["note_lead", "status_lead"])] {
        let resp = env.post("/api/v4/webhooks", &json!({"destination": dest, "settings": settings})).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    let (_, list) = env.get_json("/api/v4/webhooks").await;
    let hooks = list["_embedded"]["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 1, "same destination updates");
    assert_eq!(hooks[0]["settings"], json!(["note_lead", "status_lead"]));
    let (status, _) = env.post_json("/api/v4/webhooks", &json!({"destination": dest, "settings": ["bogus"]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let resp = env.send(Method::DELETE, "/api/v4/webhooks", &json!({"destination": dest})).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(env.get("/api/v4/webhooks").await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn contact_patch_replaces_only_the_fields_given() {
    let env = fast().await;
    let id = env.fake.add_contact(
        "Иван",
        json!([{"field_code": "PHONE", "values": [{"value": "+79990000001", "enum_code": "MOB"}]},
               {"field_id": 201, "values": [{"value": "12345"}]}]),
    );
    let patch = json!({"custom_fields_values": [{"field_code": "PHONE", "values": [{"value": "+79990000002"}]}]});
    let (status, _) = env.send_json(Method::PATCH, &format!("/api/v4/contacts/{id}"), &patch).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = env.send_json(Method::PATCH, "/api/v4/contacts", &json!([{"id": id, "name": "Иван П."}])).await;
    assert_eq!(status, StatusCode::OK);
    let (_, c) = env.get_json(&format!("/api/v4/contacts/{id}")).await;
    assert_eq!(c["name"], "Иван П.");
    let cfv = c["custom_fields_values"].as_array().expect("cfv");
    let phone = cfv.iter().find(|f| f["field_code"] == "PHONE").expect("phone");
    assert_eq!(
        phone["values"],
        json!([{"value": "+79990000002", "enum_id": 10001, "enum_code": "WORK", "enum": "WORK"}])
    );
    assert!(cfv.iter().any(|f| f["field_id"] == 201 && f["values"][0]["value"] == "12345"));
}
