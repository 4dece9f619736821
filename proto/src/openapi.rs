//! OpenAPI 3.1 documents generated from a service's spec: what `tollgate get openapi
//! SERVICE` prints and what the portal renders for a service without a document of its own
//! (an attached `openapi` document is returned as it is). [`import`] goes the other way: a
//! draft service whose routes come from a document's paths and methods.
//!
//! - A **prompt API** gets its one operation, `POST` on each route path, with the request
//!   body `{"variables": {...}}` typed from the template's variables (required ones listed)
//!   and the answer `{"output": ..., "usage": ...}`.
//! - An **AI service** gets the OpenAI-compatible surface under each route prefix:
//!   `POST .../v1/chat/completions` (the allowed models as an enum) and `GET .../v1/models`.
//! - Any other service gets its routes as forwarded operations, without schemas (the
//!   upstream defines them).
//!
//! Every operation lists the errors the edge itself answers (401, 403, 429 and, for AI
//! services, OpenAI's error shape). Regex routes have no OpenAPI path and are listed under
//! `x-tollgate-unlisted-paths`.

use serde_json::{json, Map, Value};

use crate::model::{AiRoute, AuthKind, PromptTemplate, Service, ServiceState};

/// The methods a route without a method list is documented with.
const ANY_METHOD: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The document for `svc`: its own, or one generated from its spec.
pub fn for_service(svc: &Service) -> Value {
    if let Some(doc) = &svc.openapi {
        return doc.clone();
    }
    let mut paths = Map::new();
    let mut unlisted = Vec::new();
    let deprecated = matches!(svc.state, ServiceState::Deprecated);
    for route in &svc.routes {
        for raw in &route.paths {
            let Some((path, prefix)) = openapi_path(raw) else {
                unlisted.push(Value::String(raw.clone()));
                continue;
            };
            let ops: Vec<(String, String, Value)> = match &svc.ai {
                Some(AiRoute {
                    prompt: Some(prompt), ..
                }) => vec![(path.clone(), "post".into(), prompt_operation(svc, prompt))],
                Some(ai) => {
                    let base = path.trim_end_matches('/');
                    vec![
                        (
                            format!("{base}/v1/chat/completions"),
                            "post".into(),
                            chat_operation(ai),
                        ),
                        (format!("{base}/v1/models"), "get".into(), models_operation()),
                    ]
                }
                None => {
                    let methods: Vec<String> = if route.methods.is_empty() {
                        ANY_METHOD.iter().map(|m| m.to_string()).collect()
                    } else {
                        route.methods.iter().map(|m| m.to_ascii_lowercase()).collect()
                    };
                    methods
                        .into_iter()
                        .map(|m| (path.clone(), m, forwarded_operation(svc, prefix)))
                        .collect()
                }
            };
            for (path, method, mut op) in ops {
                if deprecated {
                    op["deprecated"] = Value::Bool(true);
                }
                let item = paths.entry(path).or_insert_with(|| Value::Object(Map::new()));
                item[method.as_str()] = op;
            }
        }
    }
    let mut info = json!({
        "title": svc.name,
        "version": svc.version.clone().unwrap_or_else(|| "1".into()),
    });
    if let Some(d) = &svc.description {
        info["description"] = Value::String(d.clone());
    }
    let (schemes, security) = security(&svc.auth);
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": info,
        "paths": paths,
        "components": {
            "securitySchemes": schemes,
            "schemas": {"Error": error_schema(svc.ai.is_some())},
        },
        "security": security,
        "x-tollgate-tenant": svc.tenant,
    });
    if let Some(sunset) = &svc.sunset {
        doc["x-tollgate-sunset"] = Value::String(sunset.clone());
    }
    if !unlisted.is_empty() {
        doc["x-tollgate-unlisted-paths"] = Value::Array(unlisted);
    }
    doc
}

/// A route path as an OpenAPI path, and whether it matches by prefix; `None` for a regex.
fn openapi_path(raw: &str) -> Option<(String, bool)> {
    if raw.starts_with('~') {
        None
    } else if let Some(exact) = raw.strip_prefix('=') {
        Some((exact.to_string(), false))
    } else {
        Some((raw.to_string(), true))
    }
}

fn security(auth: &[AuthKind]) -> (Value, Value) {
    let mut schemes = Map::new();
    let mut any_of = Vec::new();
    for kind in auth {
        let (name, scheme) = match kind {
            AuthKind::ApiKey => (
                "apiKey",
                json!({"type": "apiKey", "in": "header", "name": "apikey",
                       "description": "A Tollgate API key; `Authorization: Bearer <key>` works too."}),
            ),
            AuthKind::Jwt => (
                "jwt",
                json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
            ),
            AuthKind::Oauth2 => (
                "oauth2",
                json!({"type": "http", "scheme": "bearer",
                       "description": "An OAuth2 access token, checked by introspection."}),
            ),
        };
        schemes.insert(name.into(), scheme);
        any_of.push(json!({ name: [] }));
    }
    (Value::Object(schemes), Value::Array(any_of))
}

fn error_schema(ai: bool) -> Value {
    if ai {
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }},
        })
    } else {
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string", "description": "A stable error code."},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
            },
        })
    }
}

fn error_responses(extra: &[(&str, &str)]) -> Map<String, Value> {
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
    let mut out = Map::new();
    for (status, what) in extra.iter().copied().chain([
        ("401", "No valid credential."),
        ("403", "The credential may not call this service."),
        ("429", "A rate limit, quota or token budget is exhausted."),
    ]) {
        out.insert(
            status.into(),
            json!({"description": what, "content": error.clone()}),
        );
    }
    out
}

fn prompt_operation(svc: &Service, prompt: &PromptTemplate) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for v in &prompt.variables {
        let mut schema = json!({"type": v.kind.name()});
        if let Some(d) = &v.description {
            schema["description"] = Value::String(d.clone());
        }
        props.insert(v.name.clone(), schema);
        if v.required {
            required.push(Value::String(v.name.clone()));
        }
    }
    let variables = json!({
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": false,
    });
    let mut responses = error_responses(&[
        (
            "400",
            "A variable is missing or of the wrong type; the message names it.",
        ),
        ("502", "The model provider failed."),
    ]);
    responses.insert(
        "200".into(),
        json!({
            "description": "The model's answer.",
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["output", "usage"],
                "properties": {
                    "output": {"type": ["string", "null"]},
                    "usage": usage_schema(),
                },
            }}},
        }),
    );
    json!({
        "operationId": format!("{}_prompt", svc.name),
        "summary": svc.description.clone().unwrap_or_else(|| format!("Prompt API {}", svc.name)),
        "requestBody": {
            "required": prompt.variables.iter().any(|v| v.required),
            "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"variables": variables},
                "additionalProperties": false,
            }}},
        },
        "responses": responses,
    })
}

fn usage_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
        },
    })
}

fn chat_operation(ai: &AiRoute) -> Value {
    let mut model = json!({"type": "string", "description": "`provider/model`"});
    let exact: Vec<Value> = ai
        .models
        .iter()
        .filter(|m| !m.ends_with("/*"))
        .map(|m| Value::String(m.clone()))
        .collect();
    if !exact.is_empty() && exact.len() == ai.models.len() {
        model["enum"] = Value::Array(exact);
    }
    if let Some(default) = &ai.model {
        model["default"] = Value::String(default.clone());
    }
    let mut responses = error_responses(&[
        ("400", "The request is malformed."),
        ("404", "The model is not offered by this service."),
        ("502", "Every provider in the fallback chain failed."),
    ]);
    responses.insert(
        "200".into(),
        json!({
            "description": "A chat completion, or with `stream: true` its chunks as server-sent events.",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }),
    );
    json!({
        "operationId": "createChatCompletion",
        "summary": "OpenAI-compatible chat completions",
        "requestBody": {
            "required": true,
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["messages"],
                "properties": {
                    "model": model,
                    "messages": {"type": "array", "items": {"type": "object"}},
                    "stream": {"type": "boolean"},
                    "max_tokens": {"type": "integer"},
                    "tools": {"type": "array", "items": {"type": "object"}},
                    "response_format": {"type": "object"},
                },
            }}},
        },
        "responses": responses,
    })
}

fn models_operation() -> Value {
    let mut responses = error_responses(&[]);
    responses.insert(
        "200".into(),
        json!({"description": "The models this service offers.",
               "content": {"application/json": {"schema": {"type": "object"}}}}),
    );
    json!({
        "operationId": "listModels",
        "summary": "The models this service offers",
        "responses": responses,
    })
}

fn forwarded_operation(svc: &Service, prefix: bool) -> Value {
    let mut responses = error_responses(&[("502", "The upstream could not be reached.")]);
    responses.insert("default".into(), json!({"description": "The upstream's answer."}));
    let mut op = json!({
        "summary": match &svc.upstream {
            Some(u) => format!("Forwarded to upstream {u}"),
            None => "Forwarded".to_string(),
        },
        "responses": responses,
    });
    if prefix {
        op["x-tollgate-match"] = Value::String("prefix".into());
    }
    op
}

/// The methods an OpenAPI path item may hold, as routes name them.
const OPERATIONS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// A draft service of `tenant` in front of `upstream` made from an OpenAPI 3 document: one
/// route per path with the methods it documents (`=/exact` for a fixed path, a regex for a
/// templated one, each under the path of the first `servers` URL), named `name` or after
/// `info.title`, with the document attached as its docs.
pub fn import(doc: &Value, tenant: &str, upstream: &str, name: Option<&str>) -> Result<Service, String> {
    crate::validate::check_openapi(doc)?;
    let info = &doc["info"];
    let name = match name {
        Some(n) => n.to_string(),
        None => slug(info["title"].as_str().unwrap_or("")),
    };
    crate::validate::check_name(&name).map_err(|e| format!("{e} (give --name)"))?;
    let base = doc["servers"][0]["url"]
        .as_str()
        .and_then(|u| {
            url::Url::parse(u)
                .ok()
                .map(|u| u.path().to_string())
                .or_else(|| u.starts_with('/').then(|| u.to_string()))
        })
        .map(|p| p.trim_end_matches('/').to_string())
        .unwrap_or_default();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        if !path.starts_with('/') {
            return Err(format!("path {path:?} does not start with /"));
        }
        let mut methods: Vec<String> = OPERATIONS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_uppercase())
            .collect();
        if methods.is_empty() {
            continue;
        }
        methods.sort();
        let full = format!("{base}{path}");
        let route_path = if full.contains('{') {
            let mut re = String::from("~^");
            for (i, seg) in full.split('/').enumerate() {
                if i > 0 {
                    re.push('/');
                }
                if seg.starts_with('{') && seg.ends_with('}') {
                    re.push_str("[^/]+");
                } else {
                    re.push_str(&regex::escape(seg));
                }
            }
            re.push('$');
            re
        } else {
            format!("={full}")
        };
        routes.push(crate::model::Route {
            paths: vec![route_path],
            methods,
            ..Default::default()
        });
    }
    if routes.is_empty() {
        return Err("the document has no operations under paths".into());
    }
    let tags = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .map(slug)
        .filter(|t| crate::validate::check_name(t).is_ok())
        .take(20)
        .collect();
    let text = |v: &Value| {
        v.as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(Service {
        name,
        tenant: tenant.into(),
        version: text(&info["version"]).filter(|v| crate::validate::check_name(v).is_ok()),
        state: ServiceState::Draft,
        sunset: None,
        visibility: Default::default(),
        approval: Default::default(),
        auth: vec![AuthKind::ApiKey],
        upstream: Some(upstream.into()),
        ai: None,
        policies: vec![],
        routes,
        description: text(&info["description"]).or_else(|| text(&info["summary"])),
        owner: text(&info["contact"]["email"]).or_else(|| text(&info["contact"]["name"])),
        tags,
        openapi: Some(doc.clone()),
        resource_version: None,
    })
}

/// A name from a title: lowercase letters and digits, runs of anything else as one `-`.
fn slug(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').chars().take(63).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PromptVariable, Route, VariableType};

    fn service(ai: Option<AiRoute>) -> Service {
        Service {
            name: "sentiment".into(),
            tenant: "acme".into(),
            version: None,
            state: ServiceState::default(),
            sunset: None,
            visibility: Default::default(),
            approval: Default::default(),
            auth: vec![AuthKind::ApiKey, AuthKind::Jwt],
            upstream: None,
            ai,
            policies: vec![],
            owner: None,
            tags: vec![],
            openapi: None,
            routes: vec![Route {
                paths: vec!["/sentiment".into(), "~^/x/[0-9]+$".into()],
                ..Route::default()
            }],
            description: Some("Says how a text feels".into()),
            resource_version: None,
        }
    }

    #[test]
    fn a_prompt_api_documents_its_typed_variables() {
        let svc = service(Some(AiRoute {
            model: Some("oa/gpt".into()),
            prompt: Some(PromptTemplate {
                template: "Classify {{text}} in {{n}} words".into(),
                variables: vec![
                    PromptVariable {
                        name: "text".into(),
                        required: true,
                        kind: VariableType::String,
                        description: Some("The text".into()),
                    },
                    PromptVariable {
                        name: "n".into(),
                        required: false,
                        kind: VariableType::Integer,
                        description: None,
                    },
                ],
            }),
            ..AiRoute::default()
        }));
        let doc = for_service(&svc);
        assert_eq!(doc["openapi"], "3.1.0");
        let op = &doc["paths"]["/sentiment"]["post"];
        let vars = &op["requestBody"]["content"]["application/json"]["schema"]["properties"]["variables"];
        assert_eq!(vars["properties"]["text"]["type"], "string");
        assert_eq!(vars["properties"]["text"]["description"], "The text");
        assert_eq!(vars["properties"]["n"]["type"], "integer");
        assert_eq!(vars["required"], json!(["text"]));
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["required"],
            json!(["output", "usage"])
        );
        assert!(op["responses"]["400"].is_object());
        assert_eq!(doc["security"], json!([{"apiKey": []}, {"jwt": []}]));
        assert_eq!(doc["components"]["securitySchemes"]["apiKey"]["name"], "apikey");
        assert_eq!(doc["x-tollgate-unlisted-paths"], json!(["~^/x/[0-9]+$"]));
        assert_eq!(doc["info"]["description"], "Says how a text feels");
    }

    #[test]
    fn an_ai_service_documents_the_openai_surface() {
        let mut svc = service(Some(AiRoute {
            models: vec!["oa/gpt".into(), "an/claude".into()],
            ..AiRoute::default()
        }));
        svc.state = ServiceState::Deprecated;
        let doc = for_service(&svc);
        let chat = &doc["paths"]["/sentiment/v1/chat/completions"]["post"];
        let model = &chat["requestBody"]["content"]["application/json"]["schema"]["properties"]["model"];
        assert_eq!(model["enum"], json!(["oa/gpt", "an/claude"]));
        assert_eq!(chat["deprecated"], true);
        assert!(doc["paths"]["/sentiment/v1/models"]["get"].is_object());
        assert!(
            doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["type"].is_object()
        );
        // A wildcard model leaves the enum open.
        svc.ai.as_mut().unwrap().models.push("ol/*".into());
        let doc = for_service(&svc);
        let model = &doc["paths"]["/sentiment/v1/chat/completions"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["properties"]["model"];
        assert!(model.get("enum").is_none(), "{model}");
    }

    #[test]
    fn a_rest_service_lists_its_routes_and_methods() {
        let mut svc = service(None);
        svc.upstream = Some("shop".into());
        svc.routes.push(Route {
            paths: vec!["=/health".into()],
            methods: vec!["GET".into()],
            ..Route::default()
        });
        let doc = for_service(&svc);
        let any = doc["paths"]["/sentiment"].as_object().unwrap();
        assert_eq!(any.len(), ANY_METHOD.len());
        assert_eq!(any["get"]["x-tollgate-match"], "prefix");
        let health = doc["paths"]["/health"].as_object().unwrap();
        assert_eq!(health.keys().collect::<Vec<_>>(), ["get"]);
        assert!(health["get"].get("x-tollgate-match").is_none());
        assert_eq!(health["get"]["summary"], "Forwarded to upstream shop");
    }

    #[test]
    fn import_makes_a_draft_with_a_route_per_path() {
        let doc = json!({
            "openapi": "3.0.3",
            "info": {"title": "Pet Store API", "version": "1.0.0", "description": "Pets", "contact": {"email": "pets@example.com"}},
            "servers": [{"url": "https://api.example.com/v1"}],
            "tags": [{"name": "Pets"}, {"name": "bad tag!"}],
            "paths": {
                "/pets": {"get": {}, "post": {}, "parameters": []},
                "/pets/{id}": {"get": {}, "delete": {}},
                "/empty": {"parameters": []}
            }
        });
        let s = import(&doc, "acme", "pets-be", None).unwrap();
        assert_eq!((s.name.as_str(), s.state), ("pet-store-api", ServiceState::Draft));
        assert_eq!(s.version.as_deref(), Some("1.0.0"));
        assert_eq!(s.owner.as_deref(), Some("pets@example.com"));
        assert_eq!(s.tags, ["pets", "bad-tag"]);
        let routes: Vec<(String, Vec<String>)> = s
            .routes
            .iter()
            .map(|r| (r.paths[0].clone(), r.methods.clone()))
            .collect();
        assert_eq!(
            routes,
            [
                (
                    "=/v1/pets".to_string(),
                    vec!["GET".to_string(), "POST".to_string()]
                ),
                (
                    "~^/v1/pets/[^/]+$".to_string(),
                    vec!["DELETE".to_string(), "GET".to_string()]
                ),
            ]
        );
        assert_eq!(for_service(&s), doc, "the document is attached as the docs");
        let mut errors = Vec::new();
        crate::validate::validate_spec(&crate::Spec::Service(s), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");

        assert!(import(&json!({"swagger": "2.0"}), "a", "b", None).is_err());
        let untitled = json!({"openapi": "3.1.0", "info": {"title": "!!"}, "paths": {"/a": {"get": {}}}});
        assert!(import(&untitled, "a", "b", None).unwrap_err().contains("--name"));
        assert_eq!(import(&untitled, "a", "b", Some("x")).unwrap().name, "x");
    }
}
