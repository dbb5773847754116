//! The stream acceptor and the connection hooks, over real loopback sockets,
//! checked on the bytes the broker writes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rumqttd::hooks::BoxFuture;
use rumqttd::{AckOutcome, ConnectRefusal, DisconnectReason, PublishVerdict};
use tokio::sync::Notify;

/// Bounds every test.
async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test took longer than 30 s");
}

/// A QoS 0 publish as the broker delivers it.
fn delivered_qos0(topic: &str, payload: &[u8]) -> Vec<u8> {
    publish_packet(topic, payload, 0, 0)
}

#[tokio::test]
async fn acceptor_serves_a_tcp_stream_without_hooks() {
    bounded(async {
        let (_broker, acceptor) = acceptor(None);
        let (addr, _results) = listen(acceptor).await;

        let mut sub = Raw::connected(addr, "sub").await;
        sub.send(&subscribe_packet(1, &[("a/+", 0)])).await;
        sub.expect(&[0x90, 3, 0, 1, 0], "SUBACK granted QoS 0").await;

        let mut publisher = Raw::connected(addr, "pub").await;
        publisher.send(&publish_packet("a/b", b"hello", 1, 7)).await;
        publisher.expect(&puback(7), "PUBACK from the router").await;
        sub.expect(&delivered_qos0("a/b", b"hello"), "delivery").await;
        publisher.ping("PINGRESP").await;

        publisher.send(&DISCONNECT).await;
        publisher.expect_closed("closed after DISCONNECT").await;
    })
    .await;
}

#[tokio::test]
async fn serve_returns_ok_after_client_disconnect() {
    bounded(async {
        let (_broker, acceptor) = acceptor(None);
        let (addr, mut results) = listen(acceptor).await;
        let mut c = Raw::connected(addr, "c").await;
        c.send(&DISCONNECT).await;
        c.expect_closed("closed").await;
        let r = tokio::time::timeout(WAIT, results.recv()).await.expect("serve ended");
        assert!(matches!(r, Some(Ok(()))), "serve result {r:?}");
    })
    .await;
}

#[tokio::test]
async fn refused_connect_gets_the_matching_connack_code() {
    bounded(async {
        for (refusal, code) in [
            (ConnectRefusal::NotAuthorized, 5u8),
            (ConnectRefusal::BadUserNamePassword, 4),
            (ConnectRefusal::ServerUnavailable, 3),
        ] {
            let (mut hooks, mut seen_rx) = TestHooks::new(|_| PublishVerdict::Forward);
            hooks.refuse = Some(refusal);
            let (_broker, acceptor) = acceptor(Some(hooks.arc()));
            let (addr, mut results) = listen(acceptor).await;

            let (mut c, connack) =
                Raw::connect_with(addr, "dev-1", 30, Some(("dev-1", "wrong"))).await;
            assert_eq!(connack, Read::Packet(vec![0x20, 2, 0, code]), "{refusal:?}");
            c.expect_closed("closed after refusal").await;
            assert_eq!(
                seen(&mut seen_rx).await,
                Seen::Connect {
                    client_id: "dev-1".into(),
                    username: Some("dev-1".into()),
                    password: Some("wrong".into()),
                    keep_alive: 30,
                    peer: true,
                }
            );
            let r = tokio::time::timeout(WAIT, results.recv()).await.expect("serve ended");
            assert!(
                matches!(r, Some(Err(rumqttd::ConnectionError::Refused(r))) if r == refusal),
                "serve result {r:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn consume_qos1_acks_only_when_the_future_resolves_in_arrival_order() {
    bounded(async {
        let gate = AckGate::default();
        let g = gate.clone();
        let (hooks, mut seen_rx) = TestHooks::new(move |_| g.consume());
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let (addr, _results) = listen(acceptor).await;

        // A subscriber on everything: consumed publishes must not reach it.
        let mut sub = Raw::connected(addr, "sub").await;
        sub.send(&subscribe_packet(1, &[("#", 0)])).await;
        sub.expect(&[0x90, 3, 0, 1, 0], "SUBACK").await;

        let mut dev = Raw::connected(addr, "dev").await;
        for pkid in 1..=3u16 {
            dev.send(&publish_packet("fleet/dev/pos", &[pkid as u8], 1, pkid)).await;
        }
        for pkid in 1..=3u16 {
            let s = next_publish(&mut seen_rx).await;
            assert_eq!(
                s,
                Seen::Publish {
                    topic: "fleet/dev/pos".into(),
                    payload: vec![pkid as u8],
                    qos: 1,
                    pkid
                }
            );
        }
        assert_eq!(gate.handed_out(), 3);
        dev.expect_nothing("no PUBACK before the ack futures resolve").await;

        // The connection is served while acks are pending.
        dev.ping("PINGRESP while 3 acks are pending").await;

        // The second resolves first: its PUBACK must wait for the first.
        gate.resolve(1, AckOutcome::Ack);
        dev.expect_nothing("PUBACK 2 must not overtake PUBACK 1").await;
        gate.resolve(0, AckOutcome::Ack);
        dev.expect(&puback(1), "PUBACK 1").await;
        dev.expect(&puback(2), "PUBACK 2 right after 1").await;
        dev.expect_nothing("PUBACK 3 still pending").await;
        gate.resolve(2, AckOutcome::Ack);
        dev.expect(&puback(3), "PUBACK 3").await;

        sub.expect_nothing("consumed publishes are not routed").await;
    })
    .await;
}

#[tokio::test]
async fn consume_qos1_close_outcome_closes_without_puback() {
    bounded(async {
        let gate = AckGate::default();
        let g = gate.clone();
        let (hooks, mut seen_rx) = TestHooks::new(move |_| g.consume());
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let (addr, _results) = listen(acceptor).await;

        let mut dev = Raw::connected(addr, "dev").await;
        dev.send(&publish_packet("t", b"x", 1, 9)).await;
        assert!(matches!(seen_after_connect(&mut seen_rx).await, Seen::Publish { pkid: 9, .. }));
        gate.resolve(0, AckOutcome::Close);
        let before = dev.expect_closed("closed on AckOutcome::Close").await;
        assert!(before.is_empty(), "no PUBACK before closing, got {before:?}");
        assert_eq!(
            seen(&mut seen_rx).await,
            Seen::Disconnect(DisconnectReason::ClosedByHook)
        );
    })
    .await;
}

#[tokio::test]
async fn consume_qos2_answers_pubrec_and_pubcomp_itself() {
    bounded(async {
        let (hooks, _seen_rx) = TestHooks::new(|_| PublishVerdict::Consume(None));
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let (addr, _results) = listen(acceptor).await;
        let mut dev = Raw::connected(addr, "dev").await;
        dev.send(&publish_packet("t", b"x", 2, 4)).await;
        dev.expect(&pubrec(4), "PUBREC").await;
        dev.send(&pubrel_packet(4)).await;
        dev.expect(&pubcomp(4), "PUBCOMP").await;
        dev.ping("still served").await;
    })
    .await;
}

#[tokio::test]
async fn drop_neither_acks_nor_routes() {
    bounded(async {
        let (hooks, mut seen_rx) = TestHooks::new(|_| PublishVerdict::Drop);
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let (addr, _results) = listen(acceptor).await;

        let mut sub = Raw::connected(addr, "sub").await;
        sub.send(&subscribe_packet(1, &[("#", 0)])).await;
        sub.expect(&[0x90, 3, 0, 1, 0], "SUBACK").await;

        let mut dev = Raw::connected(addr, "dev").await;
        dev.send(&publish_packet("t/1", b"x", 1, 1)).await;
        dev.send(&publish_packet("t/1", b"y", 0, 0)).await;
        assert!(matches!(next_publish(&mut seen_rx).await, Seen::Publish { qos: 1, .. }));
        assert!(matches!(next_publish(&mut seen_rx).await, Seen::Publish { qos: 0, .. }));
        dev.expect_nothing("no PUBACK for a dropped QoS 1 publish").await;
        sub.expect_nothing("nothing routed").await;
        dev.ping("connection stays open").await;
    })
    .await;
}

#[tokio::test]
async fn forward_reaches_a_subscriber_on_another_connection() {
    bounded(async {
        let (hooks, mut seen_rx) = TestHooks::new(|_| PublishVerdict::Forward);
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let (addr, _results) = listen(acceptor).await;

        // The subscriber is a real MQTT client (rumqttc).
        let mut options = rumqttc::MqttOptions::new("rumqttc-sub", "127.0.0.1", addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
        client
            .subscribe("fleet/+/pos", rumqttc::QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                tx.send(event).ok();
            }
        });
        loop {
            let e = tokio::time::timeout(WAIT, rx.recv()).await.expect("event").expect("open");
            if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(ack)) = e {
                assert_eq!(
                    ack.return_codes,
                    vec![rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)]
                );
                break;
            }
        }

        let mut dev = Raw::connected(addr, "dev").await;
        dev.send(&publish_packet("fleet/dev/pos", b"p1", 1, 1)).await;
        dev.expect(&puback(1), "PUBACK of a forwarded publish").await;
        loop {
            let e = tokio::time::timeout(WAIT, rx.recv()).await.expect("event").expect("open");
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = e {
                assert_eq!(p.topic, "fleet/dev/pos");
                assert_eq!(&p.payload[..], b"p1");
                break;
            }
        }
        assert!(matches!(seen_after_connect(&mut seen_rx).await, Seen::Subscribe(_)));
        assert!(matches!(seen_after_connect(&mut seen_rx).await, Seen::Publish { .. }));
    })
    .await;
}

#[tokio::test]
async fn forwarded_and_consumed_acks_keep_arrival_order() {
    bounded(async {
        let gate = AckGate::default();
        let g = gate.clone();
        // Odd payloads are consumed (pending ack), even ones forwarded.
        let (hooks, _seen_rx) = TestHooks::new(move |p| match p.payload()[0] % 2 {
            1 => g.consume(),
            _ => PublishVerdict::Forward,
        });
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let (addr, _results) = listen(acceptor).await;
        let mut dev = Raw::connected(addr, "dev").await;
        dev.send(&publish_packet("t", &[1], 1, 1)).await;
        dev.send(&publish_packet("t", &[2], 1, 2)).await;
        dev.expect_nothing("forwarded PUBACK 2 waits for consumed PUBACK 1").await;
        gate.resolve(0, AckOutcome::Ack);
        dev.expect(&puback(1), "PUBACK 1").await;
        dev.expect(&puback(2), "PUBACK 2").await;
    })
    .await;
}

#[tokio::test]
async fn pending_on_publish_keeps_the_connection_served() {
    bounded(async {
        let release = Arc::new(Notify::new());
        let r = release.clone();
        let (mut hooks, _seen_rx) = TestHooks::new(|_| PublishVerdict::Forward);
        hooks.on_publish = Arc::new(move |p: &rumqttd::IncomingPublish| {
            let r = r.clone();
            let slow = p.topic() == "slow";
            Box::pin(async move {
                if slow {
                    r.notified().await;
                    PublishVerdict::Consume(None)
                } else {
                    PublishVerdict::Forward
                }
            }) as BoxFuture<'static, PublishVerdict>
        });
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let (addr, _results) = listen(acceptor).await;

        let mut dev = Raw::connected(addr, "dev").await;
        dev.send(&subscribe_packet(1, &[("cmd", 0)])).await;
        dev.expect(&[0x90, 3, 0, 1, 0], "SUBACK").await;

        dev.send(&publish_packet("slow", b"x", 1, 1)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Deliveries from the router still reach the device while its
        // on_publish is pending (the other client is not blocked by it).
        let mut other = Raw::connected(addr, "other").await;
        other.send(&publish_packet("cmd", b"go", 0, 0)).await;
        dev.expect(&delivered_qos0("cmd", b"go"), "delivery while on_publish pending").await;
        // A PINGREQ behind the pending publish waits (documented).
        dev.send(&PINGREQ).await;
        dev.expect_nothing("PINGREQ waits behind the pending on_publish").await;
        release.notify_one();
        dev.expect(&puback(1), "PUBACK once on_publish answered").await;
        dev.expect(&PINGRESP, "then the PINGRESP").await;
    })
    .await;
}

#[tokio::test]
async fn backpressure_stops_reading_at_max_inflight() {
    bounded(async {
        let gate = AckGate::default();
        let g = gate.clone();
        let (hooks, _seen_rx) = TestHooks::new(move |_| g.consume());
        let mut settings = settings();
        settings.max_inflight_count = 2;
        let (_broker, acceptor) = acceptor_with(Some(hooks.arc()), settings);
        let (addr, _results) = listen(acceptor).await;
        let mut dev = Raw::connected(addr, "dev").await;
        for pkid in 1..=3u16 {
            dev.send(&publish_packet("t", b"x", 1, pkid)).await;
        }
        tokio::time::sleep(QUIET).await;
        assert_eq!(gate.handed_out(), 2, "third publish not read while 2 acks pending");
        gate.resolve(0, AckOutcome::Ack);
        dev.expect(&puback(1), "PUBACK 1").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(gate.handed_out(), 3, "third publish read after an ack went out");
        gate.resolve(1, AckOutcome::Ack);
        gate.resolve(2, AckOutcome::Ack);
        dev.expect(&puback(2), "PUBACK 2").await;
        dev.expect(&puback(3), "PUBACK 3").await;
    })
    .await;
}

#[tokio::test]
async fn denied_subscribe_filter_gets_0x80_and_no_delivery() {
    bounded(async {
        let (mut hooks, _seen_rx) = TestHooks::new(|_| PublishVerdict::Forward);
        hooks.deny_prefix = Some("secret/".into());
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let (addr, _results) = listen(acceptor).await;

        let mut sub = Raw::connected(addr, "sub").await;
        sub.send(&subscribe_packet(
            3,
            &[("open/a", 1), ("secret/b", 0), ("open/c", 0)],
        ))
        .await;
        sub.expect(&[0x90, 5, 0, 3, 1, 0x80, 0], "SUBACK per filter").await;

        // Only denied filters.
        sub.send(&subscribe_packet(4, &[("secret/x", 1)])).await;
        sub.expect(&[0x90, 3, 0, 4, 0x80], "SUBACK all denied").await;

        let mut publisher = Raw::connected(addr, "pub").await;
        publisher.send(&publish_packet("secret/b", b"no", 0, 0)).await;
        publisher.send(&publish_packet("open/c", b"yes", 0, 0)).await;
        sub.expect(&delivered_qos0("open/c", b"yes"), "allowed filter delivers").await;
        sub.expect_nothing("denied filter delivers nothing").await;
    })
    .await;
}

#[tokio::test]
async fn close_signal_disconnects_an_idle_session() {
    bounded(async {
        let close = Arc::new(Notify::new());
        let (mut hooks, mut seen_rx) = TestHooks::new(|_| PublishVerdict::Forward);
        hooks.close = Some(close.clone());
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let (addr, mut results) = listen(acceptor).await;

        let mut dev = Raw::connected(addr, "dev").await;
        dev.ping("alive").await;
        dev.expect_nothing("idle").await;
        close.notify_one();
        dev.expect_closed("closed by the close signal").await;
        assert!(matches!(seen(&mut seen_rx).await, Seen::Connect { .. }));
        assert_eq!(
            seen(&mut seen_rx).await,
            Seen::Disconnect(DisconnectReason::ClosedByHook)
        );
        let r = tokio::time::timeout(WAIT, results.recv()).await.expect("serve ended");
        assert!(
            matches!(
                r,
                Some(Err(rumqttd::ConnectionError::Session(DisconnectReason::ClosedByHook)))
            ),
            "serve result {r:?}"
        );

        // The client id can connect again (the router removed the old one).
        let mut again = Raw::connected(addr, "dev").await;
        again.ping("reconnected").await;
    })
    .await;
}

#[tokio::test]
async fn on_disconnect_reports_client_disconnect() {
    bounded(async {
        let (hooks, mut seen_rx) = TestHooks::new(|_| PublishVerdict::Forward);
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let (addr, _results) = listen(acceptor).await;
        let mut dev = Raw::connected(addr, "dev").await;
        dev.send(&DISCONNECT).await;
        dev.expect_closed("closed").await;
        assert_eq!(
            seen_after_connect(&mut seen_rx).await,
            Seen::Disconnect(DisconnectReason::ClientDisconnect)
        );
    })
    .await;
}

#[tokio::test]
async fn keep_alive_zero_is_accepted() {
    bounded(async {
        // Acceptor with hooks, acceptor without, and the config listener.
        let (hooks, mut seen_rx) = TestHooks::new(|_| PublishVerdict::Forward);
        let (_b1, with_hooks) = acceptor(Some(hooks.arc()));
        let (a1, _r1) = listen(with_hooks).await;
        let (_b2, plain) = acceptor(None);
        let (a2, _r2) = listen(plain).await;
        let a3 = config_listener(settings());
        for addr in [a1, a2, a3] {
            let (mut c, connack) = Raw::connect_with(addr, "ka0", 0, None).await;
            assert_eq!(connack, Read::Packet(vec![0x20, 2, 0, 0]), "keep-alive 0 on {addr}");
            // No keep-alive timeout: still served after an idle second.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            c.ping("alive after idling").await;
        }
        assert!(matches!(
            seen(&mut seen_rx).await,
            Seen::Connect { keep_alive: 0, .. }
        ));
    })
    .await;
}

#[tokio::test]
async fn keep_alive_timeout_still_closes() {
    bounded(async {
        let (_broker, acceptor) = acceptor(None);
        let (addr, _results) = listen(acceptor).await;
        let (mut c, connack) = Raw::connect_with(addr, "ka1", 1, None).await;
        assert_eq!(connack, Read::Packet(vec![0x20, 2, 0, 0]));
        // 1.5 × 1 s without a packet.
        let t = std::time::Instant::now();
        c.expect_closed("keep-alive timeout").await;
        assert!(t.elapsed() >= Duration::from_millis(1400), "closed too early");
    })
    .await;
}

#[tokio::test]
async fn connect_timeout_closes_silent_streams() {
    bounded(async {
        let mut s = settings();
        s.connection_timeout_ms = 300;
        let (_broker, acceptor) = acceptor_with(None, s);
        let (addr, mut results) = listen(acceptor).await;
        let mut c = Raw::open(addr).await;
        c.expect_closed("no CONNECT within 300 ms").await;
        let r = tokio::time::timeout(WAIT, results.recv()).await.expect("serve ended");
        assert!(
            matches!(r, Some(Err(rumqttd::ConnectionError::ConnectTimeout))),
            "serve result {r:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn hooks_unset_config_listener_behaves_as_upstream() {
    bounded(async {
        let addr = config_listener(settings());
        let mut sub = Raw::connected(addr, "sub").await;
        sub.send(&subscribe_packet(1, &[("x/#", 1)])).await;
        sub.expect(&[0x90, 3, 0, 1, 1], "SUBACK QoS 1").await;
        let mut publisher = Raw::connected(addr, "pub").await;
        publisher.send(&publish_packet("x/y", b"z", 1, 5)).await;
        publisher.expect(&puback(5), "PUBACK").await;
        // Delivered at QoS 1 with the router's packet id 1.
        sub.expect(&publish_packet("x/y", b"z", 1, 1), "delivery").await;
        sub.send(&puback_packet(1)).await;
        sub.ping("alive").await;
    })
    .await;
}

#[tokio::test]
async fn static_auth_failure_gets_connack_4() {
    bounded(async {
        let mut s = settings();
        s.auth = Some([("user".to_owned(), "pass".to_owned())].into());
        let addr = config_listener(s);
        let (mut c, connack) = Raw::connect_with(addr, "c", 30, Some(("user", "nope"))).await;
        assert_eq!(connack, Read::Packet(vec![0x20, 2, 0, 4]));
        c.expect_closed("closed").await;
        let (mut ok, connack) = Raw::connect_with(addr, "d", 30, Some(("user", "pass"))).await;
        assert_eq!(connack, Read::Packet(vec![0x20, 2, 0, 0]));
        ok.ping("alive").await;
    })
    .await;
}

#[tokio::test]
async fn unsubscribe_always_gets_one_unsuback() {
    bounded(async {
        let (_broker, acceptor) = acceptor(None);
        let (addr, _results) = listen(acceptor).await;
        let mut c = Raw::connected(addr, "c").await;
        c.send(&subscribe_packet(1, &[("a", 0), ("b", 0)])).await;
        c.expect(&[0x90, 4, 0, 1, 0, 0], "SUBACK").await;
        // Two subscribed filters and one never subscribed: one UNSUBACK.
        c.send(&unsubscribe_packet(2, &["a", "b", "never"])).await;
        c.expect(&[0xB0, 2, 0, 2], "one UNSUBACK").await;
        c.expect_nothing("and only one").await;
        c.send(&unsubscribe_packet(3, &["never"])).await;
        c.expect(&[0xB0, 2, 0, 3], "UNSUBACK for a filter never subscribed").await;
    })
    .await;
}

#[tokio::test]
async fn many_connections_through_the_acceptor() {
    bounded(async {
        let connects = Arc::new(AtomicUsize::new(0));
        let (hooks, _seen_rx) = TestHooks::new(|_| PublishVerdict::Consume(None));
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let (addr, _results) = listen(acceptor).await;
        let mut tasks = Vec::new();
        for i in 0..80 {
            let connects = connects.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Raw::connected(addr, &format!("dev-{i}")).await;
                c.send(&publish_packet("t", b"x", 1, 1)).await;
                c.expect(&puback(1), "PUBACK").await;
                connects.fetch_add(1, Ordering::Relaxed);
                c
            }));
        }
        let mut held = Vec::new();
        for t in tasks {
            held.push(t.await.expect("client task"));
        }
        assert_eq!(connects.load(Ordering::Relaxed), 80);
    })
    .await;
}

/// MQTT 5 through the acceptor with hooks, with rumqttc's v5 client:
/// a denied filter gets 0x87, a consumed QoS 1 publish is acked only after
/// its future, a forwarded one reaches the subscriber.
#[tokio::test]
async fn mqtt5_acceptor_with_hooks() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, SubscribeReasonCode as R5};
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::{AsyncClient, Event as E5, MqttOptions};

    bounded(async {
        let gate = AckGate::default();
        let g = gate.clone();
        let (mut hooks, _seen_rx) = TestHooks::new(move |p| match p.topic() {
            "store/me" => g.consume(),
            _ => PublishVerdict::Forward,
        });
        hooks.deny_prefix = Some("secret/".into());
        let (_broker, acceptor) = acceptor(Some(hooks.arc()));
        let acceptor = acceptor.with_version(rumqttd::MqttVersion::V5);
        let (addr, _results) = listen(acceptor).await;

        let mut options = MqttOptions::new("v5-client", "127.0.0.1", addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                tx.send(event).ok();
            }
        });
        let mut next_incoming = async || loop {
            let e = tokio::time::timeout(WAIT, rx.recv()).await.expect("event").expect("open");
            match e {
                E5::Incoming(P5::PingResp(_)) | E5::Incoming(P5::ConnAck(_)) => continue,
                E5::Incoming(p) => return p,
                E5::Outgoing(_) => continue,
            }
        };

        client.subscribe("open/#", Q5::AtMostOnce).await.expect("subscribe");
        match next_incoming().await {
            P5::SubAck(ack) => assert_eq!(ack.return_codes, vec![R5::Success(Q5::AtMostOnce)]),
            p => panic!("expected SUBACK, got {p:?}"),
        }
        client.subscribe("secret/x", Q5::AtMostOnce).await.expect("subscribe");
        match next_incoming().await {
            P5::SubAck(ack) => assert_eq!(ack.return_codes, vec![R5::NotAuthorized]),
            p => panic!("expected SUBACK, got {p:?}"),
        }

        client
            .publish("store/me", Q5::AtLeastOnce, false, "v")
            .await
            .expect("publish");
        assert!(
            tokio::time::timeout(QUIET, next_incoming()).await.is_err(),
            "no PUBACK before the ack future resolves"
        );
        assert_eq!(gate.handed_out(), 1);
        gate.resolve(0, AckOutcome::Ack);
        match next_incoming().await {
            // rumqttc numbers SUBSCRIBEs and PUBLISHes from one counter.
            P5::PubAck(ack) => assert_eq!(ack.pkid, 3),
            p => panic!("expected PUBACK, got {p:?}"),
        }

        client.publish("open/a", Q5::AtMostOnce, false, "hi").await.expect("publish");
        match next_incoming().await {
            P5::Publish(p) => {
                assert_eq!(&p.topic[..], b"open/a");
                assert_eq!(&p.payload[..], b"hi");
            }
            p => panic!("expected PUBLISH, got {p:?}"),
        }
    })
    .await;
}

#[test]
fn acceptor_is_clone_send_sync_static() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    check::<rumqttd::StreamAcceptor>();
    // `serve`'s future is Send: `listen` spawns it with tokio::spawn.
}
