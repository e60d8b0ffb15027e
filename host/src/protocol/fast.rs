//! Hand-written decoders for the frames every message costs: basic.publish, basic.ack and
//! content headers carrying no property or only delivery-mode. They return `None` for
//! anything else (or anything unusual), and the caller falls back to amq-protocol's parsers,
//! which stay the reference: the tests check both agree.

use amq_protocol::protocol::{AMQPClass, BasicProperties, basic};

use super::BASIC_CLASS;

const PUBLISH: u16 = 40;
const ACK: u16 = 80;
/// Property flag of delivery-mode (the 4th property, counted from the high bit).
const DELIVERY_MODE_FLAG: u16 = 0x1000;

/// A basic.publish or basic.ack method payload (class and method ids included).
pub(super) fn method(payload: &[u8]) -> Option<AMQPClass> {
    let class = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
    let method = u16::from_be_bytes([*payload.get(2)?, *payload.get(3)?]);
    if class != BASIC_CLASS {
        return None;
    }
    let args = &payload[4..];
    match method {
        PUBLISH => publish(args),
        ACK => ack(args),
        _ => None,
    }
}

fn publish(args: &[u8]) -> Option<AMQPClass> {
    // reserved-1 (ticket, u16), exchange, routing-key, then the mandatory/immediate bits.
    let rest = args.get(2..)?;
    let (exchange, rest) = short_string(rest)?;
    let (routing_key, rest) = short_string(rest)?;
    let [bits] = rest else {
        return None;
    };
    Some(AMQPClass::Basic(basic::AMQPMethod::Publish(
        basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: bits & 1 != 0,
            immediate: bits & 2 != 0,
        },
    )))
}

fn ack(args: &[u8]) -> Option<AMQPClass> {
    let [t0, t1, t2, t3, t4, t5, t6, t7, bits] = *args else {
        return None;
    };
    Some(AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
        delivery_tag: u64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]),
        multiple: bits & 1 != 0,
    })))
}

fn short_string(input: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = input.split_first()?;
    let len = usize::from(len);
    let text = std::str::from_utf8(rest.get(..len)?).ok()?;
    Some((text, &rest[len..]))
}

/// A content header payload whose properties are empty or delivery-mode alone: class id, body
/// size and the properties.
pub(super) fn content_header(payload: &[u8]) -> Option<(u16, u64, BasicProperties)> {
    // class (2), weight (2), body size (8), property flags (2), then the properties.
    let class_id = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
    let body_size = u64::from_be_bytes(payload.get(4..12)?.try_into().ok()?);
    let flags = u16::from_be_bytes([*payload.get(12)?, *payload.get(13)?]);
    let properties = match (flags, &payload[14..]) {
        (0, []) => BasicProperties::default(),
        (DELIVERY_MODE_FLAG, [mode]) => BasicProperties::default().with_delivery_mode(*mode),
        _ => return None,
    };
    Some((class_id, body_size, properties))
}

#[cfg(test)]
mod tests {
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame};
    use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, parse_class};

    use super::{content_header, method};

    fn method_payload(class: AMQPClass) -> Vec<u8> {
        let frame = AMQPFrame::Method(1, class);
        let bytes = gen_frame(&frame)(WriteContext::from(Vec::new()))
            .expect("encodes")
            .into_inner()
            .0;
        bytes[7..bytes.len() - 1].to_vec()
    }

    #[test]
    fn publish_and_ack_decode_like_amq_protocol() {
        let cases = [
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "amq.direct".into(),
                routing_key: "orders.eu.\u{e9}".into(),
                mandatory: true,
                immediate: false,
            })),
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "".into(),
                routing_key: "".into(),
                mandatory: false,
                immediate: true,
            })),
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: u64::MAX - 1,
                multiple: true,
            })),
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 7,
                multiple: false,
            })),
        ];
        for class in cases {
            let payload = method_payload(class.clone());
            let reference = parse_class(payload.as_slice()).expect("parses").1;
            assert_eq!(method(&payload), Some(reference.clone()));
            assert_eq!(reference, class);
        }
    }

    #[test]
    fn anything_unusual_is_left_to_the_reference_parser() {
        let publish = method_payload(AMQPClass::Basic(basic::AMQPMethod::Publish(
            basic::Publish {
                exchange: "x".into(),
                routing_key: "k".into(),
                mandatory: false,
                immediate: false,
            },
        )));
        for cut in 0..publish.len() {
            assert_eq!(method(&publish[..cut]), None, "truncated at {cut}");
        }
        let mut longer = publish.clone();
        longer.push(0);
        assert_eq!(method(&longer), None);
        let mut bad_utf8 = publish.clone();
        bad_utf8[7] = 0xff; // the exchange name's only byte
        assert_eq!(method(&bad_utf8), None);
        let qos = method_payload(AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })));
        assert_eq!(method(&qos), None);
    }

    fn header_payload(properties: BasicProperties) -> Vec<u8> {
        let frame = AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 1234,
                properties,
            },
        );
        let bytes = gen_frame(&frame)(WriteContext::from(Vec::new()))
            .expect("encodes")
            .into_inner()
            .0;
        bytes[7..bytes.len() - 1].to_vec()
    }

    #[test]
    fn plain_content_headers_decode_like_amq_protocol() {
        for properties in [
            BasicProperties::default(),
            BasicProperties::default().with_delivery_mode(2),
            BasicProperties::default().with_delivery_mode(1),
        ] {
            let payload = header_payload(properties.clone());
            let reference = amq_protocol::frame::parsing::parse_content_header(payload.as_slice())
                .expect("parses")
                .1;
            assert_eq!(
                content_header(&payload),
                Some((
                    reference.class_id,
                    reference.body_size,
                    reference.properties
                ))
            );
        }
        let richer = header_payload(
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_priority(3),
        );
        assert_eq!(content_header(&richer), None);
    }
}
