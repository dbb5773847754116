//! Routine disconnects must not log at WARN or ERROR: EOF after CONNACK, a
//! reset, a keep-alive timeout, a refused CONNECT, a CONNECT timeout, a
//! client DISCONNECT, a takeover by the same client id, a silent TCP probe.
//! One test in its own binary: it installs a global tracing subscriber.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rumqttd::{ConnectRefusal, PublishVerdict};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Records every WARN/ERROR event.
#[derive(Clone, Default)]
struct Loud(Arc<Mutex<Vec<String>>>);

impl<S: Subscriber> Layer<S> for Loud {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() <= Level::WARN {
            let mut fields = String::new();
            struct V<'a>(&'a mut String);
            impl tracing::field::Visit for V<'_> {
                fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                    self.0.push_str(&format!("{}={:?} ", f.name(), v));
                }
            }
            event.record(&mut V(&mut fields));
            self.0.lock().unwrap().push(format!(
                "{} {}: {}",
                event.metadata().level(),
                event.metadata().target(),
                fields
            ));
        }
    }
}

#[tokio::test]
async fn routine_disconnects_log_no_warnings_or_errors() {
    let loud = Loud::default();
    let subscriber = tracing_subscriber::registry().with(loud.clone());
    tracing::subscriber::set_global_default(subscriber).expect("global subscriber");

    tokio::time::timeout(Duration::from_secs(30), async {
        let mut s = settings();
        s.connection_timeout_ms = 300;
        // Config listener (no hooks) and acceptor with hooks refusing "bad".
        let config_addr = config_listener(s.clone());
        let (mut hooks, _seen) = TestHooks::new(|_| PublishVerdict::Forward);
        hooks.refuse = None;
        let (_b, plain) = acceptor_with(None, s.clone());
        let (plain_addr, _r1) = listen(plain).await;
        let (mut refusing, _seen2) = TestHooks::new(|_| PublishVerdict::Forward);
        refusing.refuse = Some(ConnectRefusal::NotAuthorized);
        let (_b2, refuse) = acceptor_with(Some(refusing.arc()), s.clone());
        let (refuse_addr, _r2) = listen(refuse).await;
        let (_b3, hooked) = acceptor_with(Some(hooks.arc()), s.clone());
        let (hooked_addr, _r3) = listen(hooked).await;

        for addr in [config_addr, plain_addr, hooked_addr] {
            // EOF right after CONNACK.
            drop(Raw::connected(addr, "eof").await);
            // DISCONNECT.
            let mut c = Raw::connected(addr, "disc").await;
            c.send(&DISCONNECT).await;
            c.expect_closed("closed").await;
            // Reset (SO_LINGER 0 close sends RST).
            let c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let mut raw = c;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            raw.write_all(&connect_packet("rst", 30, None)).await.expect("write");
            let mut ack = [0u8; 4];
            raw.read_exact(&mut ack).await.expect("connack");
            // Deprecated for blocking on drop; with a zero timeout it resets.
            #[allow(deprecated)]
            raw.set_linger(Some(Duration::ZERO)).expect("linger");
            drop(raw);
            // Keep-alive timeout (1 s -> closed after 1.5 s).
            let (mut ka, _) = Raw::connect_with(addr, "ka", 1, None).await;
            ka.expect_closed("keep-alive timeout").await;
            // Takeover: same client id twice.
            let mut first = Raw::connected(addr, "twin").await;
            let _second = Raw::connected(addr, "twin").await;
            first.expect_closed("taken over").await;
            // Silent TCP probe: CONNECT timeout.
            let mut probe = Raw::open(addr).await;
            probe.expect_closed("connect timeout").await;
            // Garbage instead of CONNECT.
            let mut junk = Raw::open(addr).await;
            junk.send(b"GET / HTTP/1.1\r\n\r\n").await;
            junk.expect_closed("not MQTT").await;
        }
        // Refused CONNECT.
        let (mut c, connack) = Raw::connect(refuse_addr, "refused").await;
        assert_eq!(connack, Read::Packet(vec![0x20, 2, 0, 5]));
        c.expect_closed("refused").await;
        // Let the broker finish logging the last disconnects.
        tokio::time::sleep(Duration::from_millis(300)).await;
    })
    .await
    .expect("bounded");

    let lines = loud.0.lock().unwrap().clone();
    assert!(lines.is_empty(), "WARN/ERROR lines for routine disconnects:\n{}", lines.join("\n"));
}
