//! gRPC through Drawbridge: unary and the three streaming shapes with trailers intact, the
//! upstream's own statuses passed through, and Drawbridge's refusals as gRPC statuses.

use drawbridge_testkit::grpc::GrpcUpstream;
use drawbridge_testkit::grpc::proto::Msg;
use drawbridge_testkit::grpc::proto::echo_client::EchoClient;
use drawbridge_testkit::harness::*;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

/// A channel to the harness's listener.
async fn channel(h: &Harness) -> Channel {
    Channel::from_shared(h.url(""))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

async fn setup() -> (GrpcUpstream, Harness, EchoClient<Channel>) {
    let up = GrpcUpstream::start().await;
    let h = Harness::start(&config(&format!(
        "[[upstreams]]\nname = \"echo\"\nendpoints = [\"{}\"]\nprotocol = \"http2\"\n\n\
         [[routes]]\nname = \"echo\"\nprefix = \"/echo.Echo\"\nupstream = \"echo\"\npublic = true\n",
        up.url()
    )))
    .await;
    let client = EchoClient::new(channel(&h).await);
    (up, h, client)
}

#[tokio::test]
async fn unary_calls_pass_with_metadata_and_trailers() {
    let (up, _h, mut client) = setup().await;
    let mut req = tonic::Request::new(Msg {
        text: "hi".into(),
        n: 1,
    });
    req.metadata_mut()
        .insert("x-forwarded-for", "6.6.6.6".parse().expect("ascii"));
    req.metadata_mut()
        .insert("x-app", "yes".parse().expect("ascii"));
    let res = client.unary(req).await.expect("unary");
    assert_eq!(
        res.metadata()
            .get("x-upstream")
            .and_then(|v| v.to_str().ok()),
        Some("echo")
    );
    assert_eq!(
        res.into_inner(),
        Msg {
            text: "HI".into(),
            n: 2
        }
    );
    let calls = up.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].get("x-app").and_then(|v| v.to_str().ok()),
        Some("yes")
    );
    assert_eq!(
        calls[0]
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok()),
        Some("127.0.0.1")
    );
    assert!(calls[0].get("x-request-id").is_some());
}

#[tokio::test]
async fn upstream_statuses_arrive_in_trailers() {
    let (_up, _h, mut client) = setup().await;
    let err = client
        .unary(Msg {
            text: "deny".into(),
            n: 0,
        })
        .await
        .expect_err("denied");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "denied by the upstream");
}

#[tokio::test]
async fn server_client_and_bidirectional_streams() {
    let (_up, _h, mut client) = setup().await;

    let mut stream = client
        .server_stream(Msg {
            text: "s".into(),
            n: 50,
        })
        .await
        .expect("server stream")
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.next().await {
        got.push(m.expect("item").text);
    }
    assert_eq!(got.len(), 50);
    assert_eq!(got[49], "s-49");

    let outbound = tokio_stream::iter((0..20).map(|i| Msg {
        text: format!("{i},"),
        n: i,
    }));
    let res = client
        .client_stream(outbound)
        .await
        .expect("client stream")
        .into_inner();
    assert_eq!(res.n, 20);
    assert!(res.text.starts_with("0,1,2,"));

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("bidi")
        .into_inner();
    for i in 0..10 {
        tx.send(Msg {
            text: format!("m{i}"),
            n: i,
        })
        .await
        .expect("send");
        let reply = replies.next().await.expect("reply").expect("ok");
        assert_eq!(reply.text, format!("echo:m{i}"));
    }
    drop(tx);
    assert!(replies.next().await.is_none());
}

#[tokio::test]
async fn drawbridge_refusals_are_grpc_statuses() {
    let (up, h, _client) = setup().await;
    // A method outside the route: Drawbridge answers UNIMPLEMENTED itself.
    let mut grpc = tonic::client::Grpc::new(channel(&h).await);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/other.Service/Call");
    let codec = tonic_prost_codec();
    let err = grpc
        .unary::<Msg, Msg, _>(tonic::Request::new(Msg::default()), path, codec)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(up.calls().is_empty());

    // The upstream gone: UNAVAILABLE.
    drop(up);
    let mut client = EchoClient::new(channel(&h).await);
    let err = client.unary(Msg::default()).await.expect_err("unavailable");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

fn tonic_prost_codec() -> tonic_prost::ProstCodec<Msg, Msg> {
    tonic_prost::ProstCodec::default()
}

#[tokio::test]
async fn a_stream_ends_when_the_credential_that_admitted_it_expires() {
    use drawbridge_testkit::jwt::{KeyType, SigningKey, jwks, now};
    let up = GrpcUpstream::start().await;
    let key = SigningKey::generate(KeyType::P256, "k1");
    let cfg = config(&format!(
        "[[authenticators]]\nname = \"corp\"\ntype = \"jwt\"\nissuer = \"https://idp.test/\"\n\
         audiences = [\"drawbridge\"]\nalgorithms = [\"ES256\"]\njwks_file = \"jwks.json\"\nleeway = \"0s\"\n\n\
         [[upstreams]]\nname = \"echo\"\nendpoints = [\"{}\"]\nprotocol = \"http2\"\n\n\
         [[routes]]\nname = \"echo\"\nprefix = \"/echo.Echo\"\nupstream = \"echo\"\nauthenticate = [\"corp\"]\nauthorize = false\n",
        up.url()
    ));
    let h = Harness::start_with(&cfg, &[("jwks.json", &jwks(&[&key]))]).await;
    let n = now();
    let token = key.sign(&serde_json::json!({
        "iss": "https://idp.test/", "aud": "drawbridge", "sub": "alice", "iat": n, "exp": n + 2,
    }));
    let mut client = EchoClient::new(channel(&h).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(Msg {
        text: "a".into(),
        n: 1,
    })
    .await
    .expect("send");
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    let mut stream = client.bidi(req).await.expect("bidi").into_inner();
    assert_eq!(
        stream.next().await.expect("one").expect("ok").text,
        "echo:a"
    );
    // The client keeps its side open and quiet; the stream must not outlive the token.
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(6), stream.next()).await;
    let ended = ended.expect("the stream outlived its credential");
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    drop(tx);
}
