//! The API examples of docs/USER-GUIDE.md, checked: every curl command goes through the real
//! router (succeeding, or failing with the status and message its comment names), every JSON
//! example parses into the type its `<!-- type: … -->` marker names and serialises back to the
//! same fields, and every route appears in the guide.

use api::model::{ErrorBody, Event, MemoryDeviceStatus, VmInfo};
use api::routes::{ROUTES, route};
use serde_json::Value;

const GUIDE: &str = include_str!("../../../docs/USER-GUIDE.md");

/// Fenced blocks: (language, the line before the fence, body).
fn blocks(doc: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines().peekable();
    let mut previous = "";
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```")
            && !lang.is_empty()
        {
            let mut body = String::new();
            for inner in lines.by_ref() {
                if inner.starts_with("```") {
                    break;
                }
                body.push_str(inner);
                body.push('\n');
            }
            out.push((lang.to_string(), previous.to_string(), body));
        }
        previous = line;
    }
    out
}

/// Shell words with single quotes; stops at an unquoted `#` (the comment is returned apart).
fn words(line: &str) -> (Vec<String>, Option<String>) {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '#' if !quoted && current.is_empty() => {
                return (words, Some(chars.collect::<String>().trim().to_string()));
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    (words, None)
}

struct Curl {
    method: String,
    target: String,
    body: String,
}

fn parse_curl(words: &[String]) -> Curl {
    let mut curl = Curl {
        method: "GET".into(),
        target: String::new(),
        body: String::new(),
    };
    let mut it = words.iter();
    while let Some(w) = it.next() {
        match w.as_str() {
            "-X" => curl.method = it.next().expect("-X METHOD").clone(),
            "-d" => curl.body = it.next().expect("-d BODY").clone(),
            "--unix-socket" => {
                it.next();
            }
            url if url.starts_with("http://") => {
                let after_host = &url["http://".len()..];
                curl.target = after_host[after_host.find('/').expect("a path")..].to_string();
            }
            _ => {}
        }
    }
    curl
}

#[test]
fn every_curl_example_is_routed_as_its_comment_says() {
    let mut checked = 0;
    for (lang, _, body) in blocks(GUIDE) {
        if lang != "sh" {
            continue;
        }
        for line in body.lines().filter(|l| l.starts_with("curl ")) {
            let (words, comment) = words(line);
            let curl = parse_curl(&words);
            let result = route(&curl.method, &curl.target, curl.body.as_bytes());
            match comment {
                None => assert!(result.is_ok(), "{line}: {:?}", result.err()),
                Some(comment) => {
                    let (status, says) = comment.split_once(": ").expect("`# NNN: text`");
                    let err = result.expect_err(line);
                    assert_eq!(err.status.to_string(), status, "{line}");
                    assert!(err.message.contains(says), "{line}: {}", err.message);
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} curl examples found");
}

fn round_trips<T: serde::Serialize + serde::de::DeserializeOwned>(json: &str) {
    let original: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let typed: T =
        serde_json::from_value(original.clone()).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(serde_json::to_value(&typed).unwrap(), original, "{json}");
}

#[test]
fn every_typed_json_example_parses_and_has_exactly_the_fields_of_its_type() {
    let mut checked = 0;
    for (lang, marker, body) in blocks(GUIDE) {
        let Some(kind) = marker
            .strip_prefix("<!-- type: ")
            .and_then(|m| m.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(lang, "json", "{marker}");
        match kind {
            "MemoryDeviceStatus" => round_trips::<MemoryDeviceStatus>(&body),
            "ErrorBody" => round_trips::<ErrorBody>(&body),
            "VmInfo" => round_trips::<VmInfo>(&body),
            "Event lines" => {
                for line in body.lines().filter(|l| !l.is_empty()) {
                    round_trips::<Event>(line);
                }
            }
            other => panic!("unknown example type {other}"),
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} typed examples found");
}

#[test]
fn every_route_is_in_the_guide() {
    for (method, path) in ROUTES {
        assert!(
            GUIDE.contains(&format!("`{method} {path}")),
            "{method} {path} is not in docs/USER-GUIDE.md"
        );
    }
}
