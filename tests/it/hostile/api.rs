//! Hostile requests to the JSON API: RunCommand and retained-command bodies, activations,
//! tokens, users, filters, paging, credentials and routes. Each table runs through
//! [`Fixture::run`]: the answer is judged, nothing may be stored, the server stays healthy.

use super::{
    Bare, Case, EmptyPage, Fixture, JSON, MIB, NoMatch, Refused, RefusedJson, ReplaceFirst as _, bad, body, get, merge,
    patch, post, raw,
};
use crate::helpers::enc;
use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

/// A valid RunCommand body for `instance_id`, with `extra` fields on top.
fn run_body(instance_id: &str, extra: Value) -> Value {
    let body = json!({"instance_ids": [instance_id], "type": "RunShellScript", "command_content": "echo hi"});
    merge(body, extra)
}

/// `body` as JSON text with `raw` (text that no `Value` can produce) in place of `"__RAW__"`.
fn splice(body: Value, raw: &str) -> Vec<u8> {
    serde_json::to_string(&body)
        .unwrap()
        .replace("\"__RAW__\"", raw)
        .into_bytes()
}

/// RunCommand, CreateCommand, ModifyCommand, InvokeCommand and StopInvocation bodies.
#[rustfmt::skip]
fn command_cases(fx: &Fixture) -> Vec<Case> {
    let id = fx.instance_id.as_str();
    let inv = "/api/v1/invocations";
    let run = |extra: Value| run_body(id, extra);
    let params = |content: &str, values: Value| {
        run(json!({"command_content": content, "enable_parameter": true, "parameters": values}))
    };
    let mut invalid_utf8 = br#"{"instance_ids":[""#.to_vec();
    invalid_utf8.extend([0xff, 0xfe, 0xfd]);
    invalid_utf8.extend(br#""],"type":"RunShellScript","command_content":"echo hi"}"#);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_field = splice(run(json!({"instance_ids": "__RAW__"})), &deep);
    let many: Vec<String> = (0..10_001).map(|n| format!("i-{n}")).collect();
    let too_many_to_stop: Vec<String> = (0..40_000).map(|n| format!("i-{n}")).collect();
    let placeholders: Vec<String> = (0..21).map(|n| format!("{{{{p{n}}}}}")).collect();
    let values: serde_json::Map<String, Value> = (0..21).map(|n| (format!("p{n}"), json!("1"))).collect();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let cmd = format!("/api/v1/commands/{}", fx.command_id);
    let invoke = format!("{cmd}/invoke");
    let stop = format!("{inv}/{}/stop", fx.invoke_id);
    let create = |extra: Value| {
        let body = json!({"region_id": "local", "name": "n", "type": "RunShellScript", "command_content": "uptime"});
        merge(body, extra)
    };
    let sql = "' OR '1'='1";
    vec![
        // Sizes and encodings of the body.
        raw("RunCommand body of 2 MiB", inv, JSON, body(run(json!({"command_content": "x".repeat(2 * MIB)}))), Refused(413, "RequestTooLarge")).mentions(&["1 MiB", "1048576"]),
        post("content of multi-byte characters one byte over 64 KiB", inv, run(json!({"command_content": "é".repeat(32_769)})), bad("InvalidParameter.CommandContent")),
        raw("body sent as text/plain", inv, "text/plain", body(run(json!({}))), Refused(415, "UnsupportedMediaType")),
        raw("body without a content type", inv, "", body(run(json!({}))), Refused(415, "UnsupportedMediaType")),
        raw("invalid UTF-8 inside a JSON string", inv, JSON, invalid_utf8, bad("InvalidParameter.Body")),
        raw("empty JSON body", inv, JSON, "", bad("InvalidParameter.Body")),
        raw("JSON null", inv, JSON, "null", bad("InvalidParameter.Body")),
        raw("trailing garbage after the object", inv, JSON, [body(run(json!({}))), b" DROP TABLE users".to_vec()].concat(), bad("InvalidParameter.Body")),
        raw("100,000 nested arrays", inv, JSON, deep.clone(), bad("InvalidParameter.Body")),
        raw("100,000 nested arrays inside instance_ids", inv, JSON, deep_field, bad("InvalidParameter.Body")),
        raw("a key given twice", inv, JSON, body(run(json!({}))).replace_first(b"{", br#"{"type":"RunBatScript","#), bad("InvalidParameter.Body")),
        post("unknown field __proto__", inv, run(json!({"__proto__": {"admin": true}})), bad("InvalidParameter.Body")),
        post("unknown command type", inv, run(json!({"type": "RunEvilScript"})), bad("InvalidParameter.Body")),
        post("content_encoding Base32", inv, run(json!({"content_encoding": "Base32"})), bad("InvalidParameter.Body")),
        post("content_encoding in lower case", inv, run(json!({"content_encoding": "base64"})), bad("InvalidParameter.Body")),
        post("content that is not Base64", inv, run(json!({"content_encoding": "Base64", "command_content": "%%%not base64"})), bad("InvalidParameter.CommandContent")),
        post("Base64 of invalid UTF-8", inv, run(json!({"content_encoding": "Base64", "command_content": b64(&[0xff, 0xfe, 0xfd])})), bad("InvalidParameter.CommandContent")),
        post("Base64 of content with a NUL byte", inv, run(json!({"content_encoding": "Base64", "command_content": b64(b"echo\0hi")})), bad("InvalidParameter.CommandContent")),
        post("Base64 decoding to 64 KiB + 1", inv, run(json!({"content_encoding": "Base64", "command_content": b64(&[b'x'; 65_537])})), bad("InvalidParameter.CommandContent")),
        post("Base64 of whitespace only", inv, run(json!({"content_encoding": "Base64", "command_content": b64(b" \n\t ")})), bad("InvalidParameter.CommandContent")),
        // NUL bytes in every text field.
        post("NUL byte in command_content", inv, run(json!({"command_content": "echo\u{0}hi"})), bad("InvalidParameter.CommandContent")),
        post("NUL byte in name", inv, run(json!({"name": "a\u{0}b"})), bad("InvalidParameter.Name")),
        post("NUL byte in description", inv, run(json!({"description": "a\u{0}b"})), bad("InvalidParameter.Description")),
        post("NUL byte in working_dir", inv, run(json!({"working_dir": "/tmp\u{0}/etc"})), bad("InvalidParameter.WorkingDir")),
        post("NUL byte in username", inv, run(json!({"username": "root\u{0}"})), bad("InvalidParameter.Username")),
        post("NUL byte in a parameter value", inv, params("echo {{a}}", json!({"a": "x\u{0}y"})), bad("InvalidParameter.Parameters")),
        post("NUL byte in an instance id", inv, run(json!({"instance_ids": ["i-\u{0}"]})), Refused(404, "InvalidInstance.NotFound")),
        // Working directories that are not absolute paths.
        post("working_dir ../../etc", inv, run(json!({"working_dir": "../../etc"})), bad("InvalidParameter.WorkingDir")),
        post("working_dir etc/passwd", inv, run(json!({"working_dir": "etc/passwd"})), bad("InvalidParameter.WorkingDir")),
        post("working_dir ~root", inv, run(json!({"working_dir": "~root"})), bad("InvalidParameter.WorkingDir")),
        post("working_dir \\\\host\\share", inv, run(json!({"working_dir": "\\\\host\\share"})), bad("InvalidParameter.WorkingDir")),
        post("working_dir of 201 characters", inv, run(json!({"working_dir": format!("/{}", "a".repeat(200))})), bad("InvalidParameter.WorkingDir")),
        post("working_dir with a newline", inv, run(json!({"working_dir": "/tmp\n/etc"})), bad("InvalidParameter.WorkingDir")),
        // Absurd timeouts.
        post("timeout 0", inv, run(json!({"timeout_secs": 0})), bad("InvalidParameter.Timeout")),
        post("timeout 10^12", inv, run(json!({"timeout_secs": 1_000_000_000_000u64})), bad("InvalidParameter.Timeout")),
        post("timeout 7 days + 1 s", inv, run(json!({"timeout_secs": 604_801})), bad("InvalidParameter.Timeout")),
        post("negative timeout", inv, run(json!({"timeout_secs": -1})), bad("InvalidParameter.Body")),
        post("timeout as a string", inv, run(json!({"timeout_secs": "60"})), bad("InvalidParameter.Body")),
        post("fractional timeout", inv, run(json!({"timeout_secs": 1.5})), bad("InvalidParameter.Body")),
        post("timeout null", inv, run(json!({"timeout_secs": null})), bad("InvalidParameter.Body")),
        raw("timeout 2^64", inv, JSON, splice(run(json!({"timeout_secs": "__RAW__"})), "18446744073709551616"), bad("InvalidParameter.Body")),
        raw("timeout 1e400", inv, JSON, splice(run(json!({"timeout_secs": "__RAW__"})), "1e400"), bad("InvalidParameter.Body")),
        // Other fields.
        post("username with shell metacharacters", inv, run(json!({"username": "root; rm -rf /"})), bad("InvalidParameter.Username")),
        post("name of 129 characters", inv, run(json!({"name": "n".repeat(129)})), bad("InvalidParameter.Name")),
        post("description of 513 characters", inv, run(json!({"description": "d".repeat(513)})), bad("InvalidParameter.Description")),
        post("keep_command without a name", inv, run(json!({"keep_command": true})), bad("InvalidParameter.Name")),
        // Instance ids.
        post("duplicated instance ids", inv, run(json!({"instance_ids": [id, id]})), bad("InvalidParameter.InstanceIds")),
        post("no instance ids", inv, run(json!({"instance_ids": []})), bad("InvalidParameter.InstanceIds")),
        post("10,001 instance ids", inv, run(json!({"instance_ids": many})), bad("InvalidParameter.InstanceIds")),
        post("instance_ids as a string", inv, run(json!({"instance_ids": id})), bad("InvalidParameter.Body")),
        post("instance id with SQL", inv, run(json!({"instance_ids": [sql]})), Refused(404, "InvalidInstance.NotFound")),
        // Parameters.
        post("21 parameters (limit 20)", inv, params(&placeholders.join(" "), Value::Object(values)), bad("InvalidParameter.Parameters")),
        post("a parameter the content does not use", inv, params("echo {{a}}", json!({"a": "1", "nope": "2"})), bad("InvalidParameter.Parameters")),
        post("a parameter without its value", inv, params("echo {{a}}", json!({})), bad("InvalidParameter.Parameters")),
        post("parameters while enable_parameter is false", inv, run(json!({"parameters": {"a": "1"}})), bad("InvalidParameter.Parameters")),
        post("an unknown built-in parameter", inv, params("echo {{fleetrun::secret}}", json!({})), bad("InvalidParameter.Parameters")),
        post("a parameter value filling the content past 64 KiB", inv, params("echo {{a}}", json!({"a": "x".repeat(70_000)})), bad("InvalidParameter.Parameters")),
        post("a parameter value that is not a string", inv, params("echo {{a}}", json!({"a": 1})), bad("InvalidParameter.Body")),
        // CreateCommand.
        post("CreateCommand with an empty name", "/api/v1/commands", create(json!({"name": " "})), bad("InvalidParameter.Name")),
        post("CreateCommand in region ../../etc", "/api/v1/commands", create(json!({"region_id": "../../etc"})), bad("InvalidParameter.RegionId")),
        post("CreateCommand in a region with SQL", "/api/v1/commands", create(json!({"region_id": sql})), bad("InvalidParameter.RegionId")),
        post("CreateCommand with timeout 0", "/api/v1/commands", create(json!({"timeout_secs": 0})), bad("InvalidParameter.Timeout")),
        post("CreateCommand with an unknown field", "/api/v1/commands", create(json!({"owner": "root"})), bad("InvalidParameter.Body")),
        post("CreateCommand with content that is not Base64", "/api/v1/commands", create(json!({"content_encoding": "Base64", "command_content": "***"})), bad("InvalidParameter.CommandContent")),
        post("CreateCommand with a NUL byte in the name", "/api/v1/commands", create(json!({"name": "a\u{0}"})), bad("InvalidParameter.Name")),
        // ModifyCommand: a refused change changes nothing, not even its valid fields.
        patch("ModifyCommand to timeout 10^12", &cmd, json!({"timeout_secs": 1_000_000_000_000u64}), bad("InvalidParameter.Timeout")),
        patch("ModifyCommand with a valid name and timeout 0", &cmd, json!({"name": "renamed", "timeout_secs": 0}), bad("InvalidParameter.Timeout")),
        patch("ModifyCommand with a NUL byte in the content", &cmd, json!({"command_content": "a\u{0}b"}), bad("InvalidParameter.CommandContent")),
        patch("ModifyCommand to a relative working_dir", &cmd, json!({"working_dir": "../x"}), bad("InvalidParameter.WorkingDir")),
        patch("ModifyCommand to a blank name", &cmd, json!({"name": "  "}), bad("InvalidParameter.Name")),
        patch("ModifyCommand with an unknown field", &cmd, json!({"region_id": "other"}), bad("InvalidParameter.Body")),
        patch("ModifyCommand of an id with SQL", format!("/api/v1/commands/{}", enc(sql)), json!({"name": "x"}), Refused(404, "InvalidCommand.NotFound")),
        Case::new("DeleteCommand of an id with SQL", Method::DELETE, format!("/api/v1/commands/{}", enc("' OR 1=1 --")), Refused(404, "InvalidCommand.NotFound")),
        // InvokeCommand.
        post("InvokeCommand with duplicated instance ids", &invoke, json!({"instance_ids": [id, id]}), bad("InvalidParameter.InstanceIds")),
        post("InvokeCommand with timeout 0", &invoke, json!({"instance_ids": [id], "timeout_secs": 0}), bad("InvalidParameter.Timeout")),
        post("InvokeCommand with a relative working_dir", &invoke, json!({"instance_ids": [id], "working_dir": "tmp"}), bad("InvalidParameter.WorkingDir")),
        post("InvokeCommand with an unknown field", &invoke, json!({"instance_ids": [id], "content": "reboot"}), bad("InvalidParameter.Body")),
        post("InvokeCommand with parameters the command does not take", &invoke, json!({"instance_ids": [id], "parameters": {"a": "1"}}), bad("InvalidParameter.Parameters")),
        post("InvokeCommand of an id with SQL", format!("/api/v1/commands/{}/invoke", enc(sql)), json!({"instance_ids": [id]}), Refused(404, "InvalidCommand.NotFound")),
        // StopInvocation: a refused stop stops nothing.
        post("stop with instance_ids as a string", &stop, json!({"instance_ids": id}), bad("InvalidParameter.Body")),
        post("stop with an unknown field", &stop, json!({"instance_ids": [id], "force": true}), bad("InvalidParameter.Body")),
        raw("stop with a body that is not JSON", &stop, JSON, "{", bad("InvalidParameter.Body")),
        post("stop naming 40,000 instances", &stop, json!({"instance_ids": too_many_to_stop}), bad("InvalidParameter.InstanceIds")),
        post("stop of an invocation id with SQL", format!("{inv}/{}/stop", enc(sql)), json!({}), Refused(404, "InvalidInvocation.NotFound")),
    ]
}

/// Activations, tokens, users, filters, credentials and routes.
#[rustfmt::skip]
fn other_cases(fx: &Fixture) -> Vec<Case> {
    let id = fx.instance_id.as_str();
    let sql = "' OR '1'='1";
    let activation = |extra: Value| merge(json!({"region_id": "local", "instance_count_limit": 1}), extra);
    let basic = |bytes: &[u8]| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(bytes));
    vec![
        // Activations.
        post("activation in region ../../etc", "/api/v1/activations", activation(json!({"region_id": "../../etc"})), bad("InvalidParameter.RegionId")),
        post("activation in a region with SQL", "/api/v1/activations", activation(json!({"region_id": sql})), bad("InvalidParameter.RegionId")),
        post("activation for 0 instances", "/api/v1/activations", activation(json!({"instance_count_limit": 0})), bad("InvalidParameter.InstanceCountLimit")),
        post("activation for -1 instances", "/api/v1/activations", activation(json!({"instance_count_limit": -1})), bad("InvalidParameter.Body")),
        post("activation for 10^12 instances", "/api/v1/activations", activation(json!({"instance_count_limit": 1_000_000_000_000u64})), bad("InvalidParameter.Body")),
        post("activation living 0 hours", "/api/v1/activations", activation(json!({"ttl_hours": 0})), bad("InvalidParameter.TtlHours")),
        post("activation living 10^6 hours", "/api/v1/activations", activation(json!({"ttl_hours": 1_000_000})), bad("InvalidParameter.TtlHours")),
        post("activation description of 101 characters", "/api/v1/activations", activation(json!({"description": "d".repeat(101)})), bad("InvalidParameter.Description")),
        post("activation description with a NUL byte", "/api/v1/activations", activation(json!({"description": "a\u{0}b"})), bad("InvalidParameter.Description")),
        post("activation with an unknown field", "/api/v1/activations", activation(json!({"activation_code": "chosen"})), bad("InvalidParameter.Body")),
        // Tokens.
        post("token with an empty name", "/api/v1/tokens", json!({"name": "   "}), bad("InvalidParameter.Name")),
        post("token name of 65 characters", "/api/v1/tokens", json!({"name": "t".repeat(65)}), bad("InvalidParameter.Name")),
        post("token name with a NUL byte", "/api/v1/tokens", json!({"name": "a\u{0}b"}), bad("InvalidParameter.Name")),
        post("token expiring in 0 days", "/api/v1/tokens", json!({"name": "t", "expires_in_days": 0}), bad("InvalidParameter.ExpiresInDays")),
        post("token expiring in -1 days", "/api/v1/tokens", json!({"name": "t", "expires_in_days": -1}), bad("InvalidParameter.Body")),
        post("token with an unknown field", "/api/v1/tokens", json!({"name": "t", "role": "admin"}), bad("InvalidParameter.Body")),
        // Users.
        post("username with a script tag", "/api/v1/users", json!({"username": "<script>u</script>", "password": "long enough password", "role": "viewer"}), bad("InvalidParameter.Username")),
        post("username with SQL", "/api/v1/users", json!({"username": "x' OR 1=1 --", "password": "long enough password", "role": "viewer"}), bad("InvalidParameter.Username")),
        post("username with a NUL byte", "/api/v1/users", json!({"username": "ann\u{0}", "password": "long enough password", "role": "viewer"}), bad("InvalidParameter.Username")),
        post("password of 5 characters", "/api/v1/users", json!({"username": "ann", "password": "short", "role": "viewer"}), bad("InvalidParameter.Password")),
        post("password of 300 characters", "/api/v1/users", json!({"username": "ann", "password": "p".repeat(300), "role": "viewer"}), bad("InvalidParameter.Password")),
        post("role root", "/api/v1/users", json!({"username": "ann", "password": "long enough password", "role": "root"}), bad("InvalidParameter.Role")),
        post("user with an unknown field", "/api/v1/users", json!({"username": "ann", "password": "long enough password", "role": "viewer", "is_admin": true}), bad("InvalidParameter.Body")),
        patch("demoting the last admin", "/api/v1/users/admin", json!({"role": "viewer"}), Refused(409, "LastAdmin")),
        patch("changing a user with an unknown field", "/api/v1/users/admin", json!({"admin": false}), bad("InvalidParameter.Body")),
        patch("changing a user named with SQL", format!("/api/v1/users/{}", enc(sql)), json!({"disabled": true}), Refused(404, "NotFound")),
        Case::new("deleting oneself", Method::DELETE, "/api/v1/users/admin", Refused(409, "DeleteSelf")),
        // SQL metacharacters in every filter.
        get("instances q with SQL", format!("/api/v1/instances?q={}", enc("' OR 1=1 --")), NoMatch("instances")),
        get("instances q of a lone %", "/api/v1/instances?q=%25", NoMatch("instances")),
        get("instances q of a NUL byte", "/api/v1/instances?q=%00", NoMatch("instances")),
        get("instances q of invalid UTF-8", "/api/v1/instances?q=%FF%FE", NoMatch("instances")),
        get("instances region_id with SQL", format!("/api/v1/instances?region_id={}", enc("local' OR '1'='1")), NoMatch("instances")),
        get("instances status with SQL", format!("/api/v1/instances?status={}", enc("Running' OR '1'='1")), bad("InvalidParameter.Status")),
        get("invocations status with SQL", format!("/api/v1/invocations?status={}", enc("Success' --")), bad("InvalidParameter.Status")),
        get("invocations instance_id with SQL", format!("/api/v1/invocations?instance_id={}", enc("' OR 1=1 --")), NoMatch("invocations")),
        get("invocations command_id with SQL", format!("/api/v1/invocations?command_id={}", enc("x' UNION SELECT * FROM users --")), NoMatch("invocations")),
        get("commands q with SQL", format!("/api/v1/commands?q={}", enc("' OR ''='")), NoMatch("commands")),
        get("commands region_id with SQL", format!("/api/v1/commands?region_id={}", enc("local'; DROP TABLE commands; --")), NoMatch("commands")),
        get("audit user with SQL", format!("/api/v1/audit?user={}", enc("admin' OR '1'='1")), NoMatch("entries")),
        get("audit action with SQL", format!("/api/v1/audit?action={}", enc("RunCommand' OR 1=1 --")), NoMatch("entries")),
        get("audit since with SQL", format!("/api/v1/audit?since={}", enc("' OR 1=1")), bad("InvalidParameter.Time")),
        get("audit since of an impossible date", "/api/v1/audit?since=2026-13-45T99:99:99Z", bad("InvalidParameter.Time")),
        // Paging and query parameters.
        get("page 0", "/api/v1/invocations?page=0", bad("InvalidParameter.Page")),
        get("page_size 100,000", "/api/v1/invocations?page_size=100000", bad("InvalidParameter.Page")),
        get("page -1", "/api/v1/invocations?page=-1", bad("InvalidParameter.Query")),
        get("page with SQL", format!("/api/v1/invocations?page={}", enc("1; DROP TABLE invocations")), bad("InvalidParameter.Query")),
        get("page 2^64", "/api/v1/invocations?page=18446744073709551616", bad("InvalidParameter.Query")),
        get("page 2^64 - 1 is out of range", "/api/v1/invocations?page=18446744073709551615&page_size=1000", bad("InvalidParameter.Page")),
        get("a page far past the end is empty", "/api/v1/invocations?page=1000000&page_size=1000", EmptyPage("invocations")),
        get("unknown query parameter", "/api/v1/invocations?sort=id;DROP", bad("InvalidParameter.Query")),
        get("status given twice", "/api/v1/invocations?status=Success&status=Failed", bad("InvalidParameter.Query")),
        get("include_output=maybe", format!("/api/v1/invocations/{}?include_output=maybe", fx.invoke_id), bad("InvalidParameter.Query")),
        // Credentials.
        get("no Authorization header", "/api/v1/instances", Refused(401, "Unauthorized")).anonymous(),
        get("Authorization: Bearer with no token", "/api/v1/instances", Refused(401, "Unauthorized")).header("authorization", "Bearer"),
        get("a 64 KiB bearer token", "/api/v1/instances", Refused(401, "InvalidToken")).header("authorization", format!("Bearer {}", "a".repeat(64 * 1024))),
        get("a bearer token with SQL", "/api/v1/instances", Refused(401, "InvalidToken")).header("authorization", format!("Bearer {sql}")),
        get("Basic that is not Base64", "/api/v1/instances", Refused(401, "InvalidCredentials")).header("authorization", "Basic !!!not-base64!!!"),
        get("Basic without a colon", "/api/v1/instances", Refused(401, "InvalidCredentials")).header("authorization", basic(b"admin")),
        get("Basic of invalid UTF-8", "/api/v1/instances", Refused(401, "InvalidCredentials")).header("authorization", basic(&[0xff, 0xfe, b':', b'x'])),
        get("Basic with SQL in the username", "/api/v1/instances", Refused(401, "InvalidCredentials")).header("authorization", basic(b"admin' --:x")),
        get("Digest scheme", "/api/v1/instances", Refused(401, "Unauthorized")).header("authorization", "Digest username=\"admin\""),
        get("Authorization of non-ASCII bytes", "/api/v1/instances", Refused(401, "Unauthorized")).header("authorization", b"Bearer \xff\xfe".to_vec()),
        get("an instance credential used as an API token", "/api/v1/instances", Refused(401, "InvalidToken")).header("authorization", format!("Bearer {id}:{}", fx.instance_secret)),
        // Headers and routes.
        (0..200).fold(get("200 request headers", "/api/v1/instances", Bare(431)), |case, n| {
            case.header(&format!("x-hostile-{n}"), "v")
        }),
        get("an unknown API route", "/api/v1/secrets", Refused(404, "NotFound")),
        Case::new("DELETE on the invocations list", Method::DELETE, "/api/v1/invocations", RefusedJson(405)),
        Case::new("PUT on a command", Method::PUT, format!("/api/v1/commands/{}", fx.command_id), RefusedJson(405)),
        get("an instance id of invalid UTF-8", "/api/v1/instances/%FF%FE", RefusedJson(400)),
        get("an instance id of a NUL byte", "/api/v1/instances/%00", Refused(404, "InvalidInstance.NotFound")),
        get("an instance id like ../../etc/passwd", format!("/api/v1/instances/{}", enc("../../etc/passwd")), Refused(404, "InvalidInstance.NotFound")),
        get("output of a result named ../../etc", format!("/api/v1/invocations/{}/results/{}/output", fx.invoke_id, enc("../../etc")), Refused(404, "InvalidResult.NotFound")),
    ]
}

#[tokio::test]
async fn hostile_run_command_and_command_bodies_are_refused_and_store_nothing() {
    let fx = Fixture::new().await;
    let cases = command_cases(&fx);
    fx.run(cases).await;
}

#[tokio::test]
async fn hostile_requests_to_other_api_routes_are_refused_and_store_nothing() {
    let fx = Fixture::new().await;
    let cases = other_cases(&fx);
    fx.run(cases).await;
}
