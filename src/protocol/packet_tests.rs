use serde_json::json;

use super::*;

fn ns(name: &str) -> Cow<'static, str> {
    Cow::Owned(name.to_owned())
}

fn main() -> Cow<'static, str> {
    Cow::Borrowed(MAIN_NAMESPACE)
}

/// Each "Packet / Encoded" pair from the spec's "Examples" section, both directions.
#[test]
fn spec_examples_round_trip() {
    let cases = [
        (
            Packet::Connect {
                nsp: main(),
                data: None,
            },
            "0",
        ),
        (
            Packet::Connect {
                nsp: ns("/admin"),
                data: Some(json!({"sid": "oSO0OpakMV_3jnilAAAA"})),
            },
            r#"0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#,
        ),
        (
            Packet::ConnectError {
                nsp: main(),
                data: json!({"message": "Not authorized"}),
            },
            r#"4{"message":"Not authorized"}"#,
        ),
        (
            Packet::Event {
                nsp: main(),
                data: vec![json!("foo")],
                id: None,
            },
            r#"2["foo"]"#,
        ),
        (
            Packet::Event {
                nsp: ns("/admin"),
                data: vec![json!("bar")],
                id: None,
            },
            r#"2/admin,["bar"]"#,
        ),
        (
            Packet::Event {
                nsp: main(),
                data: vec![json!("foo")],
                id: Some(12),
            },
            r#"212["foo"]"#,
        ),
        (
            Packet::Ack {
                nsp: ns("/admin"),
                data: vec![json!("bar")],
                id: 13,
            },
            r#"3/admin,13["bar"]"#,
        ),
        (
            Packet::Ack {
                nsp: main(),
                data: vec![],
                id: 12,
            },
            "312[]",
        ),
        (Packet::Disconnect { nsp: main() }, "1"),
        (Packet::Disconnect { nsp: ns("/admin") }, "1/admin,"),
    ];
    for (packet, text) in cases {
        assert_eq!(encode(&packet), text, "encode {packet:?}");
        assert_eq!(decode(text).unwrap(), packet, "decode {text}");
    }
}

#[test]
fn binary_examples_encode_but_do_not_decode() {
    let placeholder = json!({"_placeholder": true, "num": 0});
    let event = Packet::BinaryEvent {
        nsp: main(),
        attachments: 1,
        data: vec![json!("baz"), placeholder.clone()],
        id: None,
    };
    let text = r#"51-["baz",{"_placeholder":true,"num":0}]"#;
    assert_eq!(encode(&event), text);
    assert_eq!(decode(text), Err(ProtocolError::BinaryUnsupported));
    let ack = Packet::BinaryAck {
        nsp: main(),
        attachments: 1,
        data: vec![json!("bar"), placeholder],
        id: 15,
    };
    let text = r#"61-15["bar",{"_placeholder":true,"num":0}]"#;
    assert_eq!(encode(&ack), text);
    assert_eq!(decode(text), Err(ProtocolError::BinaryUnsupported));
    assert_eq!(
        decode(r#"61-/admin,1[{"_placeholder":true,"num":0}]"#),
        Err(ProtocolError::BinaryUnsupported)
    );
}

#[test]
fn test_suite_packets_decode() {
    // From the socket.io-protocol test suite: namespace without a trailing comma.
    assert_eq!(
        decode("0/random").unwrap(),
        Packet::Connect {
            nsp: ns("/random"),
            data: None
        }
    );
    assert_eq!(
        decode(r#"0/custom,{"token":"abc"}"#).unwrap(),
        Packet::Connect {
            nsp: ns("/custom"),
            data: Some(json!({"token": "abc"}))
        }
    );
    assert_eq!(
        decode(r#"2456["message-with-ack",1,"2",{"3":[false]}]"#).unwrap(),
        Packet::Event {
            nsp: main(),
            data: vec![
                json!("message-with-ack"),
                json!(1),
                json!("2"),
                json!({"3": [false]})
            ],
            id: Some(456)
        }
    );
    assert_eq!(
        decode(r#"2/,["x"]"#).unwrap(),
        Packet::Event {
            nsp: main(),
            data: vec![json!("x")],
            id: None
        }
    );
    assert_eq!(
        decode(&format!("3{}[]", u64::MAX)).unwrap(),
        Packet::Ack {
            nsp: main(),
            data: vec![],
            id: u64::MAX
        }
    );
}

fn reason(text: &str) -> String {
    match decode(text) {
        Err(ProtocolError::Malformed(why)) => why,
        other => panic!("{text:?} should be malformed, got {other:?}"),
    }
}

#[test]
fn malformed_inputs_say_what_is_wrong() {
    assert!(reason("").contains("empty"));
    assert!(reason("7").contains("'7'"));
    assert!(reason("x[]").contains("'x'"));
    assert!(reason(r#"2["foo""#).contains("not valid JSON"));
    assert!(reason(r#"2["foo"] trailing"#).contains("not valid JSON"));
    // No comma: the whole rest is the namespace and the EVENT has no payload.
    assert!(reason(r#"2/admin["foo"]"#).contains("without a payload"));
    assert!(reason("2/admin,").contains("without a payload"));
    let overflow = reason(r#"299999999999999999999999["foo"]"#);
    assert!(overflow.contains("99999999999999999999"), "{overflow}");
    assert!(reason(r#"2{"name":"foo"}"#).contains("must be an array, got an object"));
    assert!(reason(r#"2"foo""#).contains("must be an array, got a string"));
    assert!(reason("2[]").contains("empty array"));
    assert!(reason("2[1,2]").contains("name must be a string, got a number"));
    assert!(reason("2").contains("without a payload"));
    assert!(reason("3[]").contains("without an ack id"));
    assert!(reason("31").contains("without a payload"));
    assert!(reason("0[1]").contains("CONNECT payload must be an object"));
    assert!(reason(r#"0"tok""#).contains("got a string"));
    assert!(reason("01{}").contains("ack id 1"));
    assert!(reason("1{}").contains("DISCONNECT carries no payload"));
    assert!(reason("4").contains("CONNECT_ERROR packet without a payload"));
    assert!(reason("4[]").contains("object or a string"));
}

#[test]
fn offset_is_the_last_argument() {
    let t = event("message:new", &1, Some("abc"));
    assert_eq!(t, br#"42["message:new",1,"abc"]"#);
}

#[test]
fn numbers_decode_to_the_nearest_double() {
    // Found by tests/fuzz_parsers: without serde_json's float_roundtrip these came back
    // one unit in the last place off, so decode(encode(p)) != p.
    for x in [3.3415988933260685e-307, 9.0181494123931e+69] {
        let packet = Packet::Event {
            nsp: main(),
            data: vec![json!(""), json!([x])],
            id: None,
        };
        let text = encode(&packet);
        assert_eq!(decode(&text).unwrap(), packet, "{text}");
    }
}

#[test]
fn non_ascii_namespace_and_payload_stay_intact() {
    assert_eq!(
        decode(r#"2/é,7["ü",{"k":"€"}]"#).unwrap(),
        Packet::Event {
            nsp: ns("/é"),
            data: vec![json!("ü"), json!({"k": "€"})],
            id: Some(7)
        }
    );
}
