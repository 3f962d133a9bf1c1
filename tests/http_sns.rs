//! SNS HTTP(S) subscription deliveries through the HTTP input with `format = "sns"`: the
//! real binary on 127.0.0.1 into a file output. A loopback HTTPS server with a test CA
//! (rcgen) serves the signing certificate and plays the `SubscribeURL` endpoint; the test
//! signs messages with the test key (SignatureVersion 2 with ring; version 1 from a fixture
//! made with openssl, tests/data/sns/README.md). Signed v1 and v2 notifications are taken
//! and unwrapped; a tampered `Message`, a wrong key, a certificate on a host not allowed, a
//! plain-HTTP certificate URL are refused 403 and counted (`kind="sns_signature"`); a
//! certificate URL with a query, user info or a fragment is refused without a fetch;
//! subscriptions are confirmed, or not, per `auto_confirm` and `topic_arns`; the same
//! `MessageId` twice gives one record; bad bodies are answered 400/413 and counted, and
//! other requests flow on; a full buffer answers 503; a JSON message is parsed within the
//! memory limit (413 when it can never fit).

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::{Router, free_port, read_jsonl, wait_lines};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::blocking::Client;
use serde_json::{Value, json};

const TOPIC: &str = "arn:aws:sns:us-west-2:111122223333:ecs-events";
const OTHER_TOPIC: &str = "arn:aws:sns:us-west-2:444455556666:not-ours";
const SIGNER_KEY: &str = include_str!("data/sns/signer.key.pem");
const OTHER_KEY: &str = include_str!("data/sns/other.key.pem");
// A Notification signed with SignatureVersion 1 (SHA1withRSA) by SIGNER_KEY.
const V1_MESSAGE: &str = include_str!("data/sns/v1-notification.message.json");
const V1_SIGNATURE: &str = include_str!("data/sns/v1-notification.sig.b64");
const V1_MESSAGE_ID: &str = "5f9e3a1c-6b1e-5d59-9d3b-0c2c1f0e7a11";
const V1_TIMESTAMP: &str = "2019-11-19T19:55:39.123Z";

/// The test PKI and the loopback HTTPS server, shared by the tests of this file.
struct Pki {
    ca_pem: String,
    /// The HTTPS server's address (127.0.0.1).
    addr: SocketAddr,
    /// Requests the server has seen: path and query -> count.
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

impl Pki {
    fn get() -> &'static Pki {
        static PKI: OnceLock<Pki> = OnceLock::new();
        PKI.get_or_init(Pki::start)
    }

    fn start() -> Pki {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "firelane test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");

        let server_key = rcgen::KeyPair::generate().expect("server key");
        let server_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&server_key, &ca)
            .expect("server cert");

        // The "SNS signing certificate": the signer key's public key, as SNS's certificate
        // names sns.amazonaws.com.
        let signer = rcgen::KeyPair::from_pem(SIGNER_KEY).expect("signer key");
        let mut signing_params =
            rcgen::CertificateParams::new(vec!["sns.amazonaws.com".to_string()]).expect("params");
        signing_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sns.amazonaws.com");
        let signing_pem = signing_params
            .signed_by(&signer, &ca)
            .expect("signing cert")
            .pem();

        let tls = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .expect("TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let seen2 = seen.clone();
        // Serves until the test process exits.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let seen = seen2.clone();
                    let pem = signing_pem.clone();
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let target = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            *seen.lock().unwrap().entry(target.clone()).or_default() += 1;
                            let (status, body) = if req.uri().path().ends_with("signing.pem") {
                                (200, pem.clone())
                            } else if req.uri().path().ends_with("/confirm") {
                                (
                                    200,
                                    "<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>arn:aws:sns:us-west-2:111122223333:ecs-events:1</SubscriptionArn></ConfirmSubscriptionResult></ConfirmSubscriptionResponse>".to_string(),
                                )
                            } else {
                                (404, String::new())
                            };
                            async move {
                                let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                                *r.status_mut() = hyper::StatusCode::from_u16(status)
                                    .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                                Ok::<_, Infallible>(r)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        Pki {
            ca_pem: ca.pem(),
            addr,
            seen,
        }
    }

    /// The `SigningCertURL` of the test certificate; `scope` keeps one test's fetches
    /// apart from the others'.
    fn cert_url(&self, scope: &str) -> String {
        format!("https://{}/{scope}/signing.pem", self.addr)
    }

    /// How many times `target` (path and query) was requested.
    fn hits(&self, target: &str) -> usize {
        self.seen.lock().unwrap().get(target).copied().unwrap_or(0)
    }
}

/// The SNS string to sign (SNS developer guide, *Verifying the signatures of Amazon SNS
/// messages*), written here independently of the router's.
fn string_to_sign(m: &Value) -> String {
    let keys: &[&str] = if m["Type"] == "Notification" {
        &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    let mut s = String::new();
    for k in keys {
        if let Some(v) = m[*k].as_str() {
            s.push_str(&format!("{k}\n{v}\n"));
        }
    }
    s
}

/// Signs `m` with SignatureVersion 2 (SHA256withRSA) by the PKCS#8 `key`.
fn sign_v2(m: &mut Value, key_pem: &str) {
    let der = rcgen::KeyPair::from_pem(key_pem)
        .expect("key")
        .serialize_der();
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der).expect("RSA key");
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        string_to_sign(m).as_bytes(),
        &mut sig,
    )
    .expect("sign");
    m["SignatureVersion"] = json!("2");
    m["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(sig));
}

/// A v2-signed notification.
fn notification(
    id: &str,
    message: &str,
    subject: Option<&str>,
    topic: &str,
    cert_url: &str,
) -> Value {
    let mut m = json!({
        "Type": "Notification",
        "MessageId": id,
        "TopicArn": topic,
        "Message": message,
        "Timestamp": "2024-05-01T10:00:00.500Z",
        "SigningCertURL": cert_url,
        "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
    });
    if let Some(s) = subject {
        m["Subject"] = json!(s);
    }
    sign_v2(&mut m, SIGNER_KEY);
    m
}

/// The fixture notification signed with SignatureVersion 1.
fn v1_notification(cert_url: &str) -> Value {
    json!({
        "Type": "Notification",
        "MessageId": V1_MESSAGE_ID,
        "TopicArn": TOPIC,
        "Message": V1_MESSAGE,
        "Timestamp": V1_TIMESTAMP,
        "SignatureVersion": "1",
        "Signature": V1_SIGNATURE.trim(),
        "SigningCertURL": cert_url,
        "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
    })
}

/// A v2-signed subscription confirmation whose SubscribeURL is the test server's.
fn confirmation(scope: &str, topic: &str) -> Value {
    let pki = Pki::get();
    let mut m = json!({
        "Type": "SubscriptionConfirmation",
        "MessageId": format!("confirm-{scope}"),
        "Token": format!("token-{scope}"),
        "TopicArn": topic,
        "Message": format!("You have chosen to subscribe to the topic {topic}.\nTo confirm the subscription, visit the SubscribeURL included in this message."),
        "SubscribeURL": format!("https://{}/{scope}/confirm?Action=ConfirmSubscription&Token=token-{scope}", pki.addr),
        "Timestamp": "2024-05-01T09:59:00.000Z",
        "SigningCertURL": pki.cert_url(scope),
    });
    sign_v2(&mut m, SIGNER_KEY);
    m
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Posts `body` as SNS does (its headers, taken from the body where it has them).
fn post_as_sns(url: &str, body: &str) -> (u16, Value) {
    let m: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut req = client()
        .post(url)
        .header("content-type", "text/plain; charset=UTF-8")
        .header("user-agent", "Amazon Simple Notification Service Agent");
    for (h, k) in [
        ("x-amz-sns-message-type", "Type"),
        ("x-amz-sns-message-id", "MessageId"),
        ("x-amz-sns-topic-arn", "TopicArn"),
    ] {
        if let Some(v) = m[k].as_str() {
            req = req.header(h, v);
        }
    }
    answer(req.body(body.to_string()).send())
}

fn answer(r: reqwest::Result<reqwest::blocking::Response>) -> (u16, Value) {
    let resp = r.unwrap_or_else(|e| panic!("request failed: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// An sns http input `sns` (`sns_keys` inside its `sns` table, `extra` after it) → file
/// output `out.jsonl` with `_tag` and `_time`. The CA file lives in `tmp`.
fn start(tmp: &tempfile::TempDir, sns_keys: &str, extra: &str) -> (Router, String) {
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, &Pki::get().ca_pem).expect("write CA");
    let port = free_port();
    let config = format!(
        r#"
[inputs.sns]
type = "http"
listen = "127.0.0.1:{port}"
format = "sns"
sns = {{ cert_hosts = ["127.0.0.1"], ca_file = "{ca}", {sns_keys} }}
{extra}

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
tag_key = "_tag"
time_key = "_time"
batch = {{ max_age = "100ms" }}
"#,
        ca = ca.display()
    );
    let r = Router::start(&config);
    (r, format!("http://127.0.0.1:{port}/"))
}

fn errors(r: &Router, kind: &str) -> f64 {
    r.metric(
        "firelane_input_errors_total",
        &["input=\"sns\"", &format!("kind=\"{kind}\"")],
    )
}

#[test]
fn signed_notifications_v1_and_v2_are_taken_unwrapped_and_deduplicated() {
    let pki = Pki::get();
    let tmp = tempfile::tempdir().expect("tmp");
    let (r, url) = start(
        &tmp,
        &format!("topic_arns = [\"{TOPIC}\"]"),
        "dedupe = { window = \"10m\" }",
    );
    let cert = pki.cert_url("taken");

    // SignatureVersion 1: an EventBridge event through SNS becomes the event itself.
    let (s, b) = post_as_sns(&url, &v1_notification(&cert).to_string());
    assert_eq!((s, &b), (200, &json!({"accepted": 1})), "{}", r.logs());
    // SignatureVersion 2, a text message with a Subject.
    let text = notification(
        "m-text-1",
        "disk 91% full on i-0abc",
        Some("Alarm"),
        TOPIC,
        &cert,
    );
    let (s, b) = post_as_sns(&url, &text.to_string());
    assert_eq!((s, &b), (200, &json!({"accepted": 1})));
    // SNS retries with the same MessageId (its answer was lost): one record.
    let (s, b) = post_as_sns(&url, &text.to_string());
    assert_eq!((s, &b), (200, &json!({"accepted": 0, "duplicates": 1})));
    let (s, _) = post_as_sns(&url, &v1_notification(&cert).to_string());
    assert_eq!(s, 200);

    let lines = wait_lines(&r.path("out.jsonl"), 2, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let lines = {
        let all = read_jsonl(&r.path("out.jsonl"));
        assert_eq!(all.len(), 2, "one record per MessageId: {all:?}");
        assert_eq!(lines.len(), 2);
        all
    };
    let event = &lines[0];
    let sent: Value = serde_json::from_str(V1_MESSAGE).expect("fixture");
    assert_eq!(event["_tag"], "ECS Service Action");
    assert_eq!(event["detail"], sent["detail"]);
    assert_eq!(event["id"], sent["id"]);
    assert_eq!(
        event["sns"],
        json!({"MessageId": V1_MESSAGE_ID, "TopicArn": TOPIC, "Timestamp": V1_TIMESTAMP})
    );
    let text_rec = &lines[1];
    assert_eq!(text_rec["message"], "disk 91% full on i-0abc");
    assert_eq!(
        text_rec["_tag"], "sns",
        "the input's name when the message is not an event"
    );
    assert_eq!(
        text_rec["sns"],
        json!({"Subject": "Alarm", "MessageId": "m-text-1", "TopicArn": TOPIC, "Timestamp": "2024-05-01T10:00:00.500Z"})
    );
    assert_eq!(
        r.metric("firelane_input_duplicates_total", &["input=\"sns\""]),
        2.0
    );
    assert_eq!(
        pki.hits("/taken/signing.pem"),
        1,
        "the certificate is cached"
    );
}

#[test]
fn messages_whose_origin_is_not_proven_are_refused_403_and_counted() {
    let pki = Pki::get();
    let tmp = tempfile::tempdir().expect("tmp");
    let (r, url) = start(&tmp, &format!("topic_arns = [\"{TOPIC}\"]"), "");
    let cert = pki.cert_url("refused");
    let good = |id: &str| notification(id, "{\"ok\":true}", None, TOPIC, &cert);

    let mut tampered = good("t-1");
    tampered["Message"] = json!("{\"ok\":false}");
    let mut tampered_v1 = v1_notification(&cert);
    tampered_v1["Message"] = json!(V1_MESSAGE.replace("RESOURCE:FARGATE", "RESOURCE:CPU"));
    let mut wrong_key = good("t-2");
    sign_v2(&mut wrong_key, OTHER_KEY);
    // The right signature, but the certificate URL names a host not in cert_hosts (the
    // same server, by another name), or plain HTTP.
    let other_host = notification(
        "t-3",
        "{}",
        None,
        TOPIC,
        &format!("https://localhost:{}/refused/other.pem", pki.addr.port()),
    );
    let plain_http = notification(
        "t-4",
        "{}",
        None,
        TOPIC,
        &format!("http://{}/refused/plain.pem", pki.addr),
    );
    let mut version_3 = good("t-5");
    version_3["SignatureVersion"] = json!("3");
    let cases = [
        ("tampered Message", tampered),
        ("tampered Message (v1)", tampered_v1),
        ("wrong key", wrong_key),
        ("host not allowed", other_host),
        ("plain HTTP certificate URL", plain_http),
        ("unknown SignatureVersion", version_3),
    ];
    for (i, (what, m)) in cases.iter().enumerate() {
        let (s, b) = post_as_sns(&url, &m.to_string());
        assert_eq!(s, 403, "{what}: {b}");
        assert!(
            b["error"].as_str().is_some_and(|e| e.contains("signature")),
            "{what}: {b}"
        );
        assert_eq!(errors(&r, "sns_signature"), (i + 1) as f64, "{what}");
    }
    // A certificate URL that does not serve a certificate (404) proves nothing: 403.
    let missing_cert = notification(
        "t-10",
        "{}",
        None,
        TOPIC,
        &format!("https://{}/refused/missing.pem", pki.addr),
    );
    let (s, _) = post_as_sns(&url, &missing_cert.to_string());
    assert_eq!(s, 403);
    assert_eq!(errors(&r, "sns_signature"), 7.0);
    // A certificate host that cannot be reached may be a passing fault: 503, so that SNS
    // retries a message that may well be genuine (a 4xx would drop it).
    let unreachable = notification(
        "t-11",
        "{}",
        None,
        TOPIC,
        &format!("https://127.0.0.1:{}/refused/signing.pem", free_port()),
    );
    let (s, b) = post_as_sns(&url, &unreachable.to_string());
    assert_eq!(s, 503, "{b}");
    assert_eq!(errors(&r, "sns_cert_fetch"), 1.0);
    assert_eq!(pki.hits("/refused/other.pem"), 0, "never fetched");
    assert_eq!(pki.hits("/refused/plain.pem"), 0, "never fetched");

    // Signed, but from a topic this input does not take.
    let foreign = notification("t-6", "{}", None, OTHER_TOPIC, &cert);
    let (s, b) = post_as_sns(&url, &foreign.to_string());
    assert_eq!(s, 403, "{b}");
    assert_eq!(errors(&r, "sns_topic"), 1.0);

    // Bad input: clear answers, counted.
    let mut missing = good("t-7");
    missing.as_object_mut().expect("object").remove("MessageId");
    let (s, b) = post_as_sns(&url, &missing.to_string());
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains("\"MessageId\"")),
        "{b}"
    );
    assert_eq!(errors(&r, "not_an_sns_message"), 1.0);
    let (s, _) = answer(
        client()
            .post(&url)
            .header("x-amz-sns-message-type", "SubscriptionConfirmation")
            .body(good("t-8").to_string())
            .send(),
    );
    assert_eq!(s, 400, "header and Type disagree");
    assert_eq!(errors(&r, "not_an_sns_message"), 2.0);
    let (s, _) = post_as_sns(&url, "{\"Type\":\"Notification\",");
    assert_eq!(s, 400);
    assert_eq!(errors(&r, "bad_body"), 1.0);
    let (s, _) = answer(client().post(&url).body(vec![b' '; 2_000_000]).send());
    assert_eq!(s, 413, "a 2 MB body");
    assert_eq!(errors(&r, "too_large"), 1.0);
    // Raw delivery claims no signature: without `auth` it is not taken.
    let (s, _) = answer(
        client()
            .post(&url)
            .header("x-amz-sns-message-type", "Notification")
            .header("x-amz-sns-rawdelivery", "true")
            .header("x-amz-sns-topic-arn", TOPIC)
            .body("{\"forged\":true}")
            .send(),
    );
    assert_eq!(s, 403);
    assert_eq!(errors(&r, "sns_signature"), 8.0);

    // Other requests are unaffected, and nothing of the refused ones was kept.
    let (s, _) = post_as_sns(&url, &good("t-9").to_string());
    assert_eq!(s, 200);
    let lines = wait_lines(&r.path("out.jsonl"), 1, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let all = read_jsonl(&r.path("out.jsonl"));
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(lines[0]["sns"]["MessageId"], "t-9");
    assert_eq!(lines[0]["ok"], true);
}

#[test]
fn a_message_with_its_own_sns_field_keeps_it() {
    let pki = Pki::get();
    let tmp = tempfile::tempdir().expect("tmp");
    let (r, url) = start(&tmp, &format!("topic_arns = [\"{TOPIC}\"]"), "");
    let cert = pki.cert_url("own-sns");
    for i in 0..2 {
        let m = notification(
            &format!("own-{i}"),
            &format!("{{\"sns\":{{\"app\":\"mine\",\"n\":{i}}},\"ok\":true}}"),
            None,
            TOPIC,
            &cert,
        );
        let (s, b) = post_as_sns(&url, &m.to_string());
        assert_eq!((s, &b), (200, &json!({"accepted": 1})), "{}", r.logs());
    }
    // A message without one still gets the envelope's metadata.
    let plain = notification("own-plain", "{\"ok\":true}", None, TOPIC, &cert);
    let (s, _) = post_as_sns(&url, &plain.to_string());
    assert_eq!(s, 200);
    let lines = wait_lines(&r.path("out.jsonl"), 3, Duration::from_secs(20));
    assert_eq!(lines[0]["sns"], json!({"app": "mine", "n": 0}));
    assert_eq!(lines[1]["sns"], json!({"app": "mine", "n": 1}));
    assert_eq!(lines[2]["sns"]["MessageId"], "own-plain");
    let logs = r.logs();
    assert_eq!(
        logs.matches("SNS messages already have a field").count(),
        1,
        "warned once: {logs}"
    );
    assert!(logs.contains("key=\"sns\""), "names the key: {logs}");
}

#[test]
fn forged_certificate_urls_make_no_fetches() {
    // An adversary's messages: each names the real certificate's URL with a new query, as
    // if to make the router fetch (and cache) once per message. Refused before any fetch.
    let pki = Pki::get();
    let tmp = tempfile::tempdir().expect("tmp");
    let (r, url) = start(&tmp, &format!("topic_arns = [\"{TOPIC}\"]"), "");
    let cert = pki.cert_url("forged");
    for i in 0..40 {
        let m = notification(
            &format!("q-{i}"),
            "{}",
            None,
            TOPIC,
            &format!("{cert}?n={i}"),
        );
        let (s, b) = post_as_sns(&url, &m.to_string());
        assert_eq!(s, 403, "query {i}: {b}");
        assert!(
            b["error"].as_str().is_some_and(|e| e.contains("query")),
            "{b}"
        );
    }
    assert_eq!(errors(&r, "sns_signature"), 40.0);
    let fetched: usize = (0..40)
        .map(|i| pki.hits(&format!("/forged/signing.pem?n={i}")))
        .sum();
    assert_eq!(fetched, 0, "no fetch for a certificate URL with a query");
    assert_eq!(pki.hits("/forged/signing.pem"), 0);

    // User info and a fragment: refused, never fetched.
    let bare = pki.cert_url("forged-parts");
    let (scheme, rest) = bare.split_at("https://".len());
    for (n, u) in [format!("{scheme}user:pw@{rest}"), format!("{bare}#frag")]
        .iter()
        .enumerate()
    {
        let m = notification(&format!("p-{n}"), "{}", None, TOPIC, u);
        let (s, b) = post_as_sns(&url, &m.to_string());
        assert_eq!(s, 403, "{u}: {b}");
    }
    assert_eq!(pki.hits("/forged-parts/signing.pem"), 0);

    // Forgeries on the plain URL (wrong key): the certificate is fetched once and cached.
    for i in 0..40 {
        let mut m = notification(&format!("k-{i}"), "{}", None, TOPIC, &cert);
        sign_v2(&mut m, OTHER_KEY);
        let (s, b) = post_as_sns(&url, &m.to_string());
        assert_eq!(s, 403, "wrong key {i}: {b}");
    }
    assert_eq!(pki.hits("/forged/signing.pem"), 1);
    assert_eq!(errors(&r, "sns_signature"), 82.0);
}

#[test]
fn subscriptions_are_confirmed_only_when_auto_confirm_and_the_topic_is_listed() {
    let pki = Pki::get();
    let tmp = tempfile::tempdir().expect("tmp");
    let (r, url) = start(
        &tmp,
        &format!("topic_arns = [\"{TOPIC}\"], auto_confirm = true"),
        "",
    );
    let target =
        |scope: &str| format!("/{scope}/confirm?Action=ConfirmSubscription&Token=token-{scope}");

    let (s, _) = post_as_sns(&url, &confirmation("confirm-yes", TOPIC).to_string());
    assert_eq!(s, 200, "{}", r.logs());
    // Confirmed before the answer.
    assert_eq!(pki.hits(&target("confirm-yes")), 1, "{}", r.logs());

    let (s, _) = post_as_sns(
        &url,
        &confirmation("confirm-foreign", OTHER_TOPIC).to_string(),
    );
    assert_eq!(s, 200);
    assert_eq!(pki.hits(&target("confirm-foreign")), 0, "topic not listed");
    assert!(
        r.logs().contains(&target("confirm-foreign")),
        "the URL is logged: {}",
        r.logs()
    );

    // A forged confirmation is refused like a forged notification, never confirmed.
    let mut forged = confirmation("confirm-forged", TOPIC);
    forged["Token"] = json!("token-other");
    let (s, _) = post_as_sns(&url, &forged.to_string());
    assert_eq!(s, 403);
    assert_eq!(pki.hits(&target("confirm-forged")), 0);

    let mut unsubscribe = confirmation("unsubscribed", TOPIC);
    unsubscribe["Type"] = json!("UnsubscribeConfirmation");
    sign_v2(&mut unsubscribe, SIGNER_KEY);
    let (s, _) = post_as_sns(&url, &unsubscribe.to_string());
    assert_eq!(s, 200);
    assert_eq!(pki.hits(&target("unsubscribed")), 0, "logged, not visited");
    assert_eq!(read_jsonl(&r.path("out.jsonl")).len(), 0, "nothing kept");

    // auto_confirm = false (the default): logged for an operator, not visited.
    let tmp2 = tempfile::tempdir().expect("tmp");
    let (r2, url2) = start(&tmp2, &format!("topic_arns = [\"{TOPIC}\"]"), "");
    let (s, _) = post_as_sns(&url2, &confirmation("confirm-manual", TOPIC).to_string());
    assert_eq!(s, 200);
    assert_eq!(pki.hits(&target("confirm-manual")), 0);
    let logs = r2.logs();
    assert!(
        logs.contains("WARN") && logs.contains(&target("confirm-manual")),
        "{logs}"
    );
}

#[test]
fn raw_deliveries_are_taken_as_sent_with_the_input_auth() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (r, url) = start(
        &tmp,
        &format!("topic_arns = [\"{TOPIC}\"]"),
        "auth = { type = \"basic\", username = \"sns\", password = \"s3cret\" }\ndedupe = {}",
    );
    let raw = |id: &str, user: &str, password: &str| {
        answer(
            client()
                .post(&url)
                .basic_auth(user, Some(password))
                .header("x-amz-sns-message-type", "Notification")
                .header("x-amz-sns-rawdelivery", "true")
                .header("x-amz-sns-message-id", id)
                .header("x-amz-sns-topic-arn", TOPIC)
                .body(V1_MESSAGE)
                .send(),
        )
    };
    assert_eq!(raw("raw-1", "sns", "wrong").0, 401);
    assert_eq!(raw("raw-1", "sns", "s3cret"), (200, json!({"accepted": 1})));
    assert_eq!(
        raw("raw-1", "sns", "s3cret"),
        (200, json!({"accepted": 0, "duplicates": 1})),
        "deduplicated by x-amz-sns-message-id"
    );
    let lines = wait_lines(&r.path("out.jsonl"), 1, Duration::from_secs(20));
    let mut rec = lines[0].clone();
    assert_eq!(rec["_tag"], "ECS Service Action");
    let obj = rec.as_object_mut().expect("object");
    obj.remove("_tag");
    obj.remove("_time");
    let sent: Value = serde_json::from_str(V1_MESSAGE).expect("fixture");
    assert_eq!(rec, sent, "the body as sent");
}

#[test]
fn a_full_buffer_answers_503_never_a_4xx() {
    let pki = Pki::get();
    let tmp = tempfile::tempdir().expect("tmp");
    let (silent, silent_addr) = common::silent_peer();
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write CA");
    let port = free_port();
    let config = format!(
        r#"
[inputs.sns]
type = "http"
listen = "127.0.0.1:{port}"
format = "sns"
accept_timeout = "300ms"
sns = {{ cert_hosts = ["127.0.0.1"], ca_file = "{ca}" }}

[routes.all]
to = ["stuck"]

[outputs.stuck]
type = "http"
url = "http://{silent_addr}/ingest"
timeout = "10m"
batch = {{ max_records = 5, max_age = "100ms" }}
buffer = {{ type = "memory", max_size = "32KiB", when_full = "block" }}
concurrency = 1
"#,
        ca = ca.display()
    );
    let r = Router::start(&config);
    let url = format!("http://127.0.0.1:{port}/");
    let cert = pki.cert_url("full");
    let started = Instant::now();
    let mut accepted = 0;
    let (status, retry_after) = loop {
        let m = notification(
            &format!("full-{accepted}"),
            &"p".repeat(900),
            None,
            TOPIC,
            &cert,
        );
        let resp = client()
            .post(&url)
            .header("x-amz-sns-message-type", "Notification")
            .body(m.to_string())
            .send()
            .expect("post");
        match resp.status().as_u16() {
            200 => accepted += 1,
            s => {
                break (
                    s,
                    resp.headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                );
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60) && accepted < 2000,
            "the buffer never filled ({accepted} accepted)"
        );
    };
    assert!(accepted > 0);
    assert_eq!(status, 503, "SNS drops on any 4xx");
    assert!(retry_after.is_some());
    assert!(errors(&r, "full") >= 1.0);
    drop(silent);
}

#[test]
fn a_message_too_large_to_parse_within_the_memory_limit_is_413() {
    let pki = Pki::get();
    let tmp = tempfile::tempdir().expect("tmp");
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write CA");
    let port = free_port();
    let config = format!(
        r#"
[runtime]
memory_limit = "8MiB"

[inputs.sns]
type = "http"
listen = "127.0.0.1:{port}"
format = "sns"
sns = {{ cert_hosts = ["127.0.0.1"], ca_file = "{ca}" }}

[routes.all]
to = ["out"]

[outputs.out]
type = "file"
path = "{{dir}}/out.jsonl"
"#,
        ca = ca.display()
    );
    let r = Router::start(&config);
    let url = format!("http://127.0.0.1:{port}/");
    let cert = pki.cert_url("budget");
    // 150 000 tiny values: 300 KB of JSON inside the Message string, about 19 MB by the
    // parse estimate, more than requests may hold under an 8 MiB limit (3/4 of it).
    let values = vec!["1"; 150_000].join(",");
    let big = notification("b-1", &format!("{{\"v\":[{values}]}}"), None, TOPIC, &cert);
    let (s, b) = post_as_sns(&url, &big.to_string());
    assert_eq!(s, 413, "{b}");
    assert!(
        b["error"].as_str().is_some_and(|e| e.contains("memory")),
        "{b}"
    );
    // The same bytes as plain text are not parsed: taken.
    let text = notification("b-2", &format!("[{values}]"), None, TOPIC, &cert);
    let (s, b) = post_as_sns(&url, &text.to_string());
    assert_eq!(s, 200, "{b}");
    let lines = wait_lines(&r.path("out.jsonl"), 1, Duration::from_secs(20));
    assert_eq!(lines[0]["sns"]["MessageId"], "b-2");
}
