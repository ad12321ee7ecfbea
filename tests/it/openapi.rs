//! The OpenAPI document of `/api/v1` against the real server: it parses as OpenAPI 3.1 with every
//! reference resolved, each documented operation is routed and asks for the credentials the
//! document says, every route of the API is documented (the router and the document come from one
//! registration, and the README's API table agrees with both), and `/api/docs` renders it under the
//! Content-Security-Policy. `tests/openapi/run.sh` (in `.ci/run`) checks the served document with
//! a validator from PyPI.

use crate::browser::{Browser, WAIT};
use crate::helpers::{Answer, TestApp, eventually};
use fantoccini::Locator;
use serde_json::Value;
use std::collections::BTreeSet;

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

async fn served_document(app: &TestApp) -> (Answer, Value) {
    let answer = Answer::of(reqwest::Client::new().get(format!("{}/api/v1/openapi.json", app.url)))
        .await
        .unwrap();
    let document = serde_json::from_str(&answer.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.text));
    (answer, document)
}

/// Every (method, path) of the document, with `{parameter}` names kept.
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut found = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                found.push((method.to_uppercase(), path.clone(), operation.clone()));
            }
        }
    }
    found
}

/// `/instances/{instance_id}` → `/instances/{}`: names of parameters differ between tables.
fn shape(path: &str) -> String {
    let mut out = String::new();
    let mut in_braces = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_braces = true;
                out.push_str("{}");
            }
            '}' => in_braces = false,
            _ if in_braces => {}
            _ => out.push(c),
        }
    }
    out
}

fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => found.push(target),
                    _ => refs(value, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_served_document_is_openapi_3_1_with_every_reference_resolved_and_unique_operation_ids() {
    let app = TestApp::spawn().await;

    let (answer, document) = served_document(&app).await;

    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    // Kept for a look (and for a validator run by hand): target/tmp/openapi.json.
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("openapi.json"),
        &answer.text,
    )
    .unwrap();
    for key in ["info", "paths", "components", "security", "tags"] {
        assert!(document.get(key).is_some(), "no `{key}`");
    }
    let mut targets = Vec::new();
    refs(&document, &mut targets);
    assert!(targets.len() > 50, "{targets:?}");
    for target in targets {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{target} is not local"));
        assert!(document.pointer(pointer).is_some(), "{target} points at nothing");
    }
    let ids: Vec<String> = operations(&document)
        .iter()
        .map(|(m, p, op)| {
            op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{m} {p} has no operationId"))
                .to_string()
        })
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "operationIds repeat: {ids:?}");
}

#[tokio::test]
async fn the_document_describes_authentication_errors_and_the_multipart_upload() {
    let app = TestApp::spawn().await;

    let (_, document) = served_document(&app).await;

    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["basic"]["scheme"], "basic");
    assert_eq!(document["security"], serde_json::json!([{"bearer": []}, {"basic": []}]));
    let error = &document["components"]["schemas"]["ErrorBody"];
    let required: BTreeSet<&str> = error["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, BTreeSet::from(["code", "message", "request_id"]));
    let run = &document["paths"]["/api/v1/invocations"]["post"];
    assert_eq!(run["responses"]["401"]["$ref"], "#/components/responses/Unauthorized");
    assert_eq!(run["responses"]["4XX"]["$ref"], "#/components/responses/ClientError");
    let upload = &document["paths"]["/api/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"];
    let form = upload["schema"]["$ref"].as_str().unwrap().trim_start_matches('#');
    let form = document.pointer(form).unwrap();
    assert_eq!(form["properties"]["file"]["format"], "binary");
    assert!(form["required"].as_array().unwrap().contains(&"file".into()), "{form}");
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_asks_for_the_credentials_it_documents() {
    let app = TestApp::spawn().await;
    let (_, document) = served_document(&app).await;
    let http = reqwest::Client::new();

    let mut wrong = Vec::new();
    let operations = operations(&document);
    for (method, path, operation) in &operations {
        let url = format!("{}{}", app.url, path.replace('{', "x").replace('}', ""));
        let request = http.request(method.parse().unwrap(), &url);
        let answer = Answer::of(request).await.unwrap();
        let public = operation["security"] == serde_json::json!([{}]);
        let code = serde_json::from_str::<Value>(&answer.text)
            .ok()
            .map(|b| b["code"].clone());
        // Without credentials a documented route answers 401 before its handler runs; a route
        // missing from the router would answer 404 `NotFound` (or 405 for a missing method).
        let fine = if public {
            answer.status == 200
        } else {
            answer.status == 401 && code == Some("Unauthorized".into())
        };
        if !fine {
            wrong.push(format!(
                "{method} {path} (public: {public}) → {} {}",
                answer.status, answer.text
            ));
        }
    }

    assert!(operations.len() >= 40, "{} operations", operations.len());
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// (method, path shape) of each route named in the README's API table (paths there are relative
/// to `/api/v1`).
fn readme_routes() -> BTreeSet<(String, String)> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## The API\n")
        .nth(1)
        .expect("README.md has a `## The API` section");
    let mut routes = BTreeSet::new();
    for row in section.lines().take_while(|l| !l.starts_with("## ")) {
        let Some(first_cell) = row.strip_prefix("| `").and_then(|r| r.split(" |").next()) else {
            continue;
        };
        for span in format!("`{first_cell}").split('`').skip(1).step_by(2) {
            let Some((methods, path)) = span.split_once(' ') else {
                continue;
            };
            if !methods.chars().all(|c| c.is_ascii_uppercase() || c == '/') || !path.starts_with('/') {
                continue;
            }
            let path = path.split('?').next().unwrap();
            for method in methods.split('/') {
                routes.insert((method.to_string(), shape(&format!("/api/v1{path}"))));
            }
        }
    }
    routes
}

#[tokio::test]
async fn the_document_and_the_readme_api_table_name_the_same_routes() {
    let app = TestApp::spawn().await;

    let (_, document) = served_document(&app).await;

    let documented: BTreeSet<(String, String)> = operations(&document)
        .into_iter()
        .map(|(method, path, _)| (method, shape(&path)))
        .collect();
    let listed = readme_routes();
    assert!(listed.len() >= 40, "the README table parsed to {listed:?}");
    let undocumented: Vec<_> = listed.difference(&documented).collect();
    let unlisted: Vec<_> = documented.difference(&listed).collect();
    assert!(
        undocumented.is_empty() && unlisted.is_empty(),
        "in README.md but not in the document: {undocumented:?}; in the document but not in README.md: {unlisted:?}"
    );
}

/// The router cannot list its routes, so the proof that it serves nothing undocumented is how
/// it is built: `api::registered` adds routes only with `routes!` (method and path from the
/// handler's `#[utoipa::path]`), and nothing else is mounted under `/api/v1`.
#[test]
fn api_routes_are_registered_only_through_their_openapi_annotations() {
    let api = include_str!("../../src/server/api/mod.rs");
    let registered = api
        .split("fn registered()")
        .nth(1)
        .and_then(|rest| rest.split("\n}\n").next())
        .expect("src/server/api/mod.rs has `fn registered()`");
    for bypass in [
        ".route(",
        ".route_service(",
        ".nest(",
        ".nest_service(",
        ".merge(",
        ".fallback_service(",
    ] {
        assert!(
            !registered.contains(bypass),
            "api::registered calls `{bypass}…`: a route added so is not in the OpenAPI document; \
             annotate the handler with #[utoipa::path] and register it with `.routes(routes!(…))`"
        );
    }
    assert_eq!(
        registered.matches(".routes(routes!(").count(),
        registered.matches("routes!(").count()
    );
    let server = include_str!("../../src/server/mod.rs");
    let mounts: Vec<&str> = server.lines().filter(|l| l.contains("\"/api/v1")).collect();
    assert_eq!(
        mounts,
        ["        .nest(\"/api/v1\", api::routes())"],
        "only api::routes() may serve /api/v1"
    );
}

#[tokio::test]
async fn the_api_page_loads_only_its_own_files_with_no_inline_script() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();

    let page = Answer::of(http.get(format!("{}/api/docs", app.url))).await.unwrap();

    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self';") && csp.contains("style-src 'self';"),
        "{csp}"
    );
    assert!(!page.text.contains("<style"), "{}", page.text);
    let mut assets = Vec::new();
    for piece in page.text.split("<script").skip(1) {
        let tag = piece.split('>').next().unwrap();
        let body = piece.split('>').nth(1).unwrap().split("</script").next().unwrap();
        assert!(
            tag.contains(" src=\"/static/") && body.trim().is_empty(),
            "inline script: <script{piece}"
        );
        assets.push(quoted_after(tag, "src=\""));
    }
    assets.push(quoted_after(&page.text, "rel=\"stylesheet\" href=\""));
    assert_eq!(assets.len(), 3, "{assets:?}");
    for asset in assets {
        let answer = Answer::of(http.get(format!("{}{asset}", app.url))).await.unwrap();
        assert_eq!(answer.status, 200, "{asset}");
        assert!(answer.text.len() > 500, "{asset}");
    }
}

/// The value that follows the first `marker` (which ends with an opening quote) in `text`.
fn quoted_after(text: &str, marker: &str) -> String {
    let after = text
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("no {marker} in {text}"));
    after.split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn the_api_page_renders_every_operation_in_a_browser_under_the_csp() {
    let app = TestApp::spawn().await;
    let (_, document) = served_document(&app).await;
    let expected = operations(&document).len();
    let browser = Browser::start().await;

    browser.client.goto(&format!("{}/api/docs", app.url)).await.unwrap();

    let shown = eventually(WAIT, "Swagger UI to show every operation", || async {
        let blocks = browser.client.find_all(Locator::Css(".opblock")).await.ok()?;
        (blocks.len() == expected).then_some(blocks.len())
    })
    .await;
    assert_eq!(shown, expected);
    browser.wait_text(".swagger-ui .info .title", "fleetrun API").await;
    // The stylesheet applied (an unstyled page has no coloured method badges), and nothing was
    // refused by the Content-Security-Policy while it rendered (api-docs.js counts refusals).
    let styled = browser
        .eval("return getComputedStyle(document.querySelector('.opblock-summary-method')).backgroundColor")
        .await;
    assert_ne!(styled, "rgba(0, 0, 0, 0)", "the Swagger UI stylesheet did not apply");
    let refused = browser
        .eval("return document.getElementById('swagger-ui').dataset.cspViolations || ''")
        .await;
    assert_eq!(refused, "", "the CSP refused something");
}
