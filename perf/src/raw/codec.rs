//! Pure frame helpers of the raw client: bytes in, events out; no I/O.
//!
//! Methods and content headers are encoded and decoded with amq-protocol's generated codecs.
//! What is ours is the part that makes the client lean:
//! - [`PublishTemplate`]: one message (basic.publish, content header, body frames) encoded once
//!   per routing key and copied into a batch buffer per message, with only the body's 8-byte
//!   send time and (bodies of 16 bytes or more) its 8-byte sequence word patched;
//! - [`Inbound`]: a streaming parser over a read buffer that checks a whole frame is buffered
//!   before decoding it (an incomplete frame is not an error), keeps body frames as slices
//!   (a delivery's body is never copied, only its first 8 bytes are read), and assembles
//!   method → header → body frames into one [`Event::Delivery`];
//! - [`ConfirmTracker`]: publisher-confirm bookkeeping for basic.ack/nack with `multiple`.

use std::collections::BTreeSet;

use amq_protocol::{
    frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parsing::parse_content_header},
    protocol::{AMQPClass, BasicProperties, basic, parse_class},
};
use anyhow::{Context, anyhow, bail, ensure};

/// Frame types and the frame-end octet (AMQP 0-9-1 §4.2.3).
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// type (1) + channel (2) + payload size (4) before the payload, frame-end (1) after it.
const FRAME_HEADER_LEN: usize = 7;
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 1;
/// The class id of basic, carried in content headers.
const BASIC_CLASS: u16 = 60;

/// Appends one frame to `out` with amq-protocol's generator.
pub fn encode(out: &mut Vec<u8>, frame: &AMQPFrame) -> anyhow::Result<()> {
    let ctx = gen_frame(frame)(WriteContext::from(std::mem::take(out)))
        .map_err(|e| anyhow!("encoding {frame}: {e}"))?;
    *out = ctx.into_inner().0;
    Ok(())
}

/// Appends a method frame to `out`.
pub fn encode_method(out: &mut Vec<u8>, channel: u16, method: AMQPClass) -> anyhow::Result<()> {
    encode(out, &AMQPFrame::Method(channel, method))
}

/// One message, encoded once: basic.publish, the content header, and the body split into frames
/// of at most `frame_max` bytes. The body is zeros except for the send time (little-endian ns,
/// as [`crate::stats::stamp`] writes it) in its first 8 bytes and, in bodies of at least 16
/// bytes, the sequence word ([`crate::stats::seq_word`]: publisher and message number) in the
/// next 8, both patched per message.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Offset of the send time in `bytes`; `None` for bodies shorter than 8 bytes.
    stamp_at: Option<usize>,
    /// Offset of the sequence word; `None` unless the first body frame holds 16 bytes.
    seq_at: Option<usize>,
}

impl PublishTemplate {
    pub fn new(
        channel: u16,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body_size: usize,
        frame_max: u32,
    ) -> anyhow::Result<Self> {
        let mut bytes = Vec::new();
        let publish = basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        };
        encode_method(
            &mut bytes,
            channel,
            AMQPClass::Basic(basic::AMQPMethod::Publish(publish)),
        )?;
        let header = AMQPContentHeader {
            class_id: BASIC_CLASS,
            body_size: body_size as u64,
            properties,
        };
        encode(&mut bytes, &AMQPFrame::Header(channel, header))?;
        ensure!(
            bytes.len() <= frame_max as usize || frame_max == 0,
            "basic.publish and its header take {} bytes, more than frame_max {frame_max}",
            bytes.len()
        );
        // frame_max bounds a whole frame, envelope included (0 = no limit).
        let chunk = match frame_max as usize {
            0 => body_size.max(1),
            n => n - FRAME_OVERHEAD,
        };
        let body = vec![0u8; body_size];
        let (mut stamp_at, mut seq_at) = (None, None);
        for (i, part) in body.chunks(chunk).enumerate() {
            if i == 0 && part.len() >= 8 {
                stamp_at = Some(bytes.len() + FRAME_HEADER_LEN);
            }
            if i == 0 && part.len() >= 16 {
                seq_at = Some(bytes.len() + FRAME_HEADER_LEN + 8);
            }
            encode(&mut bytes, &AMQPFrame::Body(channel, part.to_vec()))?;
        }
        Ok(Self {
            bytes,
            stamp_at,
            seq_at,
        })
    }

    /// Encoded size of one message.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Appends the message to `out` with `sent_ns` as its send time and `seq` as its sequence
    /// word (where the body has room for them).
    pub fn append_to(&self, out: &mut Vec<u8>, sent_ns: u64, seq: u64) {
        let at = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(s) = self.stamp_at {
            out[at + s..at + s + 8].copy_from_slice(&sent_ns.to_le_bytes());
        }
        if let Some(s) = self.seq_at {
            out[at + s..at + s + 8].copy_from_slice(&seq.to_le_bytes());
        }
    }
}

/// What the broker sent, one complete frame (or one complete delivery) at a time.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A method other than basic.deliver (whose content follows and is assembled).
    Method(u16, AMQPClass),
    /// A whole delivery: method, header and every body frame have arrived.
    Delivery {
        channel: u16,
        delivery_tag: u64,
        /// The send time stamped by the publisher, if the body has at least 8 bytes.
        sent_ns: Option<u64>,
        /// The sequence word (bytes 8..16), if the body has at least 16 bytes.
        seq: Option<u64>,
    },
    Heartbeat,
}

/// The outcome of looking at the front of the read buffer.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// No whole frame is buffered yet: read more.
    NeedMore,
    /// One frame of `used` bytes was consumed; it completed `event`, if any.
    Frame { used: usize, event: Option<Event> },
}

/// Where we are in a content-bearing method's frames.
#[derive(Debug, Clone, Copy)]
enum Content {
    Idle,
    /// After basic.deliver (tag) or another content method (None: its content is skipped).
    Header {
        channel: u16,
        tag: Option<u64>,
    },
    Body {
        channel: u16,
        tag: Option<u64>,
        remaining: u64,
        /// The body's first 16 bytes (send time, sequence word), as far as they have arrived.
        head: [u8; 16],
        head_len: usize,
        body_size: u64,
    },
}

/// A streaming parser of inbound frames. Feed it the unconsumed part of the read buffer; it
/// consumes one complete frame per call and keeps the content state between calls, so a
/// delivery split anywhere across reads assembles correctly.
#[derive(Debug)]
pub struct Inbound {
    content: Content,
    /// Largest accepted frame, envelope included (the negotiated frame_max).
    frame_max: u32,
}

impl Inbound {
    /// Before tune, the spec's minimum frame size bounds what the server may send (§4.2.1);
    /// connection.start with its server properties fits easily in that.
    pub fn new() -> Self {
        Self {
            content: Content::Idle,
            frame_max: 4096,
        }
    }

    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    /// Consumes at most one frame from the front of `buf`.
    pub fn next(&mut self, buf: &[u8]) -> anyhow::Result<Step> {
        // Check, then parse: the envelope first, decoding only once the frame is whole.
        let Some(envelope) = buf.get(..FRAME_HEADER_LEN) else {
            return Ok(Step::NeedMore);
        };
        let kind = envelope[0];
        let channel = u16::from_be_bytes([envelope[1], envelope[2]]);
        let size = u32::from_be_bytes([envelope[3], envelope[4], envelope[5], envelope[6]]);
        let total = size as usize + FRAME_OVERHEAD;
        ensure!(
            self.frame_max == 0 || total <= self.frame_max as usize,
            "frame of {total} bytes (type {kind}) exceeds frame_max {}",
            self.frame_max
        );
        if buf.len() < total {
            return Ok(Step::NeedMore);
        }
        ensure!(
            buf[total - 1] == FRAME_END,
            "frame (type {kind}, {size} bytes) does not end with 0xCE"
        );
        let payload = &buf[FRAME_HEADER_LEN..total - 1];
        let event = match kind {
            FRAME_METHOD => self.method(channel, payload)?,
            FRAME_HEADER => self.header(channel, payload)?,
            FRAME_BODY => self.body(channel, payload)?,
            FRAME_HEARTBEAT => Some(Event::Heartbeat),
            other => bail!("unknown frame type {other}"),
        };
        Ok(Step::Frame { used: total, event })
    }

    fn method(&mut self, channel: u16, payload: &[u8]) -> anyhow::Result<Option<Event>> {
        ensure!(
            matches!(self.content, Content::Idle),
            "method frame on channel {channel} in the middle of a message's content"
        );
        let (_, class) = parse_class(payload).map_err(|e| anyhow!("parsing a method: {e}"))?;
        let tag = match &class {
            AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => Some(d.delivery_tag),
            AMQPClass::Basic(basic::AMQPMethod::Return(_) | basic::AMQPMethod::GetOk(_)) => None,
            _ => return Ok(Some(Event::Method(channel, class))),
        };
        self.content = Content::Header { channel, tag };
        // basic.return still reports (mandatory is never set, so it is unexpected).
        Ok(tag.is_none().then_some(Event::Method(channel, class)))
    }

    fn header(&mut self, channel: u16, payload: &[u8]) -> anyhow::Result<Option<Event>> {
        let Content::Header { channel: ch, tag } = self.content else {
            bail!("content header on channel {channel} without a content method");
        };
        ensure!(
            ch == channel,
            "content header on channel {channel}, expected {ch}"
        );
        let (_, header) =
            parse_content_header(payload).map_err(|e| anyhow!("parsing a content header: {e}"))?;
        self.content = Content::Body {
            channel,
            tag,
            remaining: header.body_size,
            head: [0; 16],
            head_len: 0,
            body_size: header.body_size,
        };
        Ok(self.finish_if_complete())
    }

    fn body(&mut self, channel: u16, payload: &[u8]) -> anyhow::Result<Option<Event>> {
        let Content::Body {
            channel: ch,
            remaining,
            head,
            head_len,
            ..
        } = &mut self.content
        else {
            bail!("body frame on channel {channel} without a content header");
        };
        ensure!(
            *ch == channel,
            "body frame on channel {channel}, expected {ch}"
        );
        ensure!(
            payload.len() as u64 <= *remaining,
            "body frame of {} bytes with {remaining} left of the body",
            payload.len()
        );
        *remaining -= payload.len() as u64;
        let take = (16 - *head_len).min(payload.len());
        head[*head_len..*head_len + take].copy_from_slice(&payload[..take]);
        *head_len += take;
        Ok(self.finish_if_complete())
    }

    fn finish_if_complete(&mut self) -> Option<Event> {
        let Content::Body {
            channel,
            tag,
            remaining: 0,
            head,
            body_size,
            ..
        } = self.content
        else {
            return None;
        };
        self.content = Content::Idle;
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&head[at..at + 8]);
            u64::from_le_bytes(w)
        };
        Some(Event::Delivery {
            channel,
            delivery_tag: tag?,
            sent_ns: (body_size >= 8).then(|| word(0)),
            seq: (body_size >= 16).then(|| word(8)),
        })
    }
}

/// Publisher confirms: delivery tags count from 1 in publish order, and basic.ack/nack settle
/// one tag or, with `multiple`, every tag up to and including it (§ confirm.select).
#[derive(Debug)]
pub struct ConfirmTracker {
    /// Every tag below this one is settled.
    floor: u64,
    /// Tags at or above `floor` settled one by one, out of order.
    above: BTreeSet<u64>,
}

impl Default for ConfirmTracker {
    fn default() -> Self {
        Self {
            floor: 1,
            above: BTreeSet::new(),
        }
    }
}

impl ConfirmTracker {
    /// Records an ack or nack; returns how many messages it newly settled.
    pub fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        if tag < self.floor {
            return 0;
        }
        let newly = if multiple {
            let rest = self.above.split_off(&(tag + 1));
            let already = self.above.len() as u64;
            self.above = rest;
            let n = tag + 1 - self.floor - already;
            self.floor = tag + 1;
            n
        } else {
            u64::from(self.above.insert(tag))
        };
        while self.above.remove(&self.floor) {
            self.floor += 1;
        }
        newly
    }
}

/// The reply of a connection.close or channel.close from the broker, for error reports.
pub fn describe_close(class: &AMQPClass) -> Option<String> {
    use amq_protocol::protocol::{channel, connection};
    match class {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => Some(format!(
            "connection closed by the broker: {} {}",
            c.reply_code, c.reply_text
        )),
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => Some(format!(
            "channel closed by the broker: {} {}",
            c.reply_code, c.reply_text
        )),
        _ => None,
    }
}

/// Parses every complete frame of `buf`, passing events to `on`; returns the bytes consumed.
pub fn parse_all(
    parser: &mut Inbound,
    buf: &[u8],
    mut on: impl FnMut(Event) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let mut at = 0;
    while let Step::Frame { used, event } = parser.next(&buf[at..]).context("bad frame")? {
        at += used;
        if let Some(e) = event {
            on(e)?;
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use amq_protocol::{
        frame::parse_frame,
        types::{AMQPValue, FieldTable, ShortString},
    };

    use super::*;

    fn props() -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from("k"), AMQPValue::LongString("7".into()));
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers)
    }

    /// Splits a byte string into amq-protocol frames with its own parser.
    fn frames(mut bytes: &[u8]) -> Vec<AMQPFrame> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let (rest, f) = parse_frame(bytes).expect("a valid frame");
            out.push(f);
            bytes = rest;
        }
        out
    }

    #[test]
    fn publish_batch_round_trips_through_amq_protocol() {
        let t = PublishTemplate::new(1, "ex", "k7", props(), 16, 131_072).unwrap();
        let mut batch = Vec::new();
        for i in 0..3u64 {
            t.append_to(&mut batch, 1000 + i, 7 + i);
        }
        assert_eq!(batch.len(), 3 * t.len());
        let parsed = frames(&batch);
        assert_eq!(parsed.len(), 9);
        for (i, msg) in parsed.chunks(3).enumerate() {
            let AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Publish(p))) = &msg[0]
            else {
                panic!("expected basic.publish, got {:?}", msg[0]);
            };
            assert_eq!((p.exchange.as_str(), p.routing_key.as_str()), ("ex", "k7"));
            let AMQPFrame::Header(1, h) = &msg[1] else {
                panic!("expected a header, got {:?}", msg[1]);
            };
            assert_eq!(h.class_id, 60);
            assert_eq!(h.body_size, 16);
            assert_eq!(h.properties, props());
            let AMQPFrame::Body(1, body) = &msg[2] else {
                panic!("expected a body, got {:?}", msg[2]);
            };
            assert_eq!(body.len(), 16);
            assert_eq!(body[..8], (1000 + i as u64).to_le_bytes());
            assert_eq!(body[8..], (7 + i as u64).to_le_bytes());
        }
    }

    #[test]
    fn large_bodies_are_split_at_frame_max_and_short_ones_carry_no_stamp() {
        let t = PublishTemplate::new(3, "", "q", BasicProperties::default(), 10_000, 4096).unwrap();
        let mut batch = Vec::new();
        t.append_to(&mut batch, 42, 9);
        let parsed = frames(&batch);
        let bodies: Vec<&Vec<u8>> = parsed
            .iter()
            .filter_map(|f| match f {
                AMQPFrame::Body(3, b) => Some(b),
                _ => None,
            })
            .collect();
        assert_eq!(
            bodies.iter().map(|b| b.len()).collect::<Vec<_>>(),
            [4088, 4088, 1824]
        );
        assert_eq!(bodies[0][..8], 42u64.to_le_bytes());

        let t = PublishTemplate::new(1, "", "q", BasicProperties::default(), 4, 4096).unwrap();
        let mut batch = Vec::new();
        t.append_to(&mut batch, 42, 9);
        assert!(matches!(&frames(&batch)[2], AMQPFrame::Body(1, b) if b == &[0; 4]));
        let t = PublishTemplate::new(1, "", "q", BasicProperties::default(), 0, 4096).unwrap();
        assert_eq!(frames(&t.bytes).len(), 2);
    }

    /// What a broker sends for one delivery: deliver, header, body in `parts` frames.
    fn delivery(out: &mut Vec<u8>, tag: u64, body: &[u8], parts: usize) {
        let deliver = basic::Deliver {
            consumer_tag: "ctag".into(),
            delivery_tag: tag,
            redelivered: false,
            exchange: "ex".into(),
            routing_key: "k1".into(),
        };
        encode_method(
            out,
            1,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)),
        )
        .unwrap();
        let header = AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: props(),
        };
        encode(out, &AMQPFrame::Header(1, header)).unwrap();
        let step = body.len().div_ceil(parts).max(1);
        for part in body.chunks(step) {
            encode(out, &AMQPFrame::Body(1, part.to_vec())).unwrap();
        }
    }

    /// Feeds `wire` in reads of the given sizes (cycled) through a buffer the way the client
    /// does: append, parse every whole frame, keep the rest.
    fn feed(wire: &[u8], reads: &[usize]) -> Vec<Event> {
        let mut parser = Inbound::new();
        parser.set_frame_max(131_072);
        let (mut events, mut buf, mut at) = (Vec::new(), Vec::new(), 0);
        for n in reads.iter().cycle() {
            if at == wire.len() {
                break;
            }
            let end = (at + n).min(wire.len());
            buf.extend_from_slice(&wire[at..end]);
            at = end;
            let used = parse_all(&mut parser, &buf, |e| {
                events.push(e);
                Ok(())
            })
            .unwrap();
            buf.drain(..used);
        }
        assert!(buf.is_empty(), "{} bytes left unparsed", buf.len());
        events
    }

    #[test]
    fn deliveries_split_across_reads_parse_the_same() {
        let mut body = vec![0u8; 40];
        body[..8].copy_from_slice(&123_456u64.to_le_bytes());
        body[8..16].copy_from_slice(&77u64.to_le_bytes());
        let mut wire = Vec::new();
        delivery(&mut wire, 1, &body, 1);
        // A body in frames of 3 bytes: the stamp and the sequence word are split across frames.
        delivery(&mut wire, 2, &body, 14);
        delivery(&mut wire, 3, &[], 1);
        delivery(&mut wire, 4, &[9; 5], 1);
        let ok = AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 9,
            multiple: true,
        }));
        encode_method(&mut wire, 1, ok.clone()).unwrap();
        wire.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0xCE]);

        let expected = vec![
            Event::Delivery {
                channel: 1,
                delivery_tag: 1,
                sent_ns: Some(123_456),
                seq: Some(77),
            },
            Event::Delivery {
                channel: 1,
                delivery_tag: 2,
                sent_ns: Some(123_456),
                seq: Some(77),
            },
            Event::Delivery {
                channel: 1,
                delivery_tag: 3,
                sent_ns: None,
                seq: None,
            },
            Event::Delivery {
                channel: 1,
                delivery_tag: 4,
                sent_ns: None,
                seq: None,
            },
            Event::Method(1, ok),
            Event::Heartbeat,
        ];
        assert_eq!(feed(&wire, &[wire.len()]), expected);
        for n in 1..wire.len() {
            assert_eq!(feed(&wire, &[n]), expected, "reads of {n} bytes");
        }
        assert_eq!(feed(&wire, &[1, 7, 2, 50, 3]), expected);
    }

    /// The client's own read buffer over a socket that delivers a few bytes at a time: frames
    /// straddle reads, partial frames are moved to the front, the buffer grows for big frames.
    #[tokio::test]
    async fn read_buffer_reassembles_frames_from_small_reads() {
        use tokio::io::AsyncWriteExt;

        let mut wire = Vec::new();
        let mut stamped = vec![0u8; 16];
        stamped[..8].copy_from_slice(&77u64.to_le_bytes());
        for tag in 1..=20_000 {
            delivery(&mut wire, tag, &stamped, 1);
        }
        let big = vec![5u8; 600_000]; // two body frames, each larger than the 256 KiB buffer
        delivery(&mut wire, 20_001, &big, 2);
        let (mut tx, mut rx) = tokio::io::duplex(1499);
        let writer = tokio::spawn(async move { tx.write_all(&wire).await });

        let mut parser = Inbound::new();
        parser.set_frame_max(600_000);
        let mut buf = super::super::conn::ReadBuf::new();
        let mut tags = Vec::new();
        loop {
            let used = parse_all(&mut parser, buf.filled(), |e| {
                if let Event::Delivery {
                    delivery_tag,
                    sent_ns,
                    ..
                } = e
                {
                    let want = if delivery_tag <= 20_000 {
                        Some(77)
                    } else {
                        Some(u64::from_le_bytes([5; 8]))
                    };
                    assert_eq!(sent_ns, want, "tag {delivery_tag}");
                    tags.push(delivery_tag);
                }
                Ok(())
            })
            .unwrap();
            buf.consume(used);
            if buf.fill(&mut rx, 600_000).await.unwrap() == 0 {
                break;
            }
        }
        writer.await.unwrap().unwrap();
        assert!(buf.filled().is_empty());
        assert_eq!(tags, (1..=20_001).collect::<Vec<u64>>());
    }

    #[test]
    fn malformed_frames_are_errors() {
        let mut parser = Inbound::new();
        // Bad frame end.
        assert!(parser.next(&[8, 0, 0, 0, 0, 0, 0, 0]).is_err());
        // Larger than frame_max: refused as soon as the envelope is seen.
        assert!(parser.next(&[1, 0, 1, 0, 1, 0, 0]).is_err());
        // Body without header.
        assert!(
            Inbound::new()
                .next(&[3, 0, 1, 0, 0, 0, 1, 7, 0xCE])
                .is_err()
        );
        // Incomplete is not an error.
        assert_eq!(Inbound::new().next(&[1, 0, 1]).unwrap(), Step::NeedMore);
        assert_eq!(
            Inbound::new().next(&[1, 0, 1, 0, 0, 0, 9, 1]).unwrap(),
            Step::NeedMore
        );
    }

    #[test]
    fn confirms_settle_single_multiple_and_out_of_order() {
        let mut c = ConfirmTracker::default();
        assert_eq!(c.settle(3, true), 3); // 1, 2, 3
        assert_eq!(c.settle(3, true), 0); // repeated
        assert_eq!(c.settle(5, false), 1); // out of order
        assert_eq!(c.settle(5, false), 0);
        assert_eq!(c.settle(4, false), 1); // fills the gap: floor moves past 5
        assert_eq!(c.floor, 6);
        assert_eq!(c.settle(8, false), 1);
        assert_eq!(c.settle(10, true), 4); // 6, 7, 9, 10 (8 was already settled)
        assert_eq!(c.settle(2, false), 0);
        assert_eq!((c.floor, c.above.len()), (11, 0));
        assert_eq!(c.settle(13, false), 1);
        assert_eq!(c.settle(12, true), 2); // 11, 12; then 13 is absorbed
        assert_eq!(c.floor, 14);
    }
}
