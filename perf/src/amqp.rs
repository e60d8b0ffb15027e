//! Small helpers around lapin: a loopback-only connect, KEY=VALUE argument tables, templates.

use std::{net::IpAddr, str::FromStr};

use anyhow::{Context, bail};
use lapin::{
    Connection, ConnectionProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
    uri::AMQPUri,
};

/// Refuses any URI whose host is not on this machine's loopback: the tool generates load, and
/// load goes to loopback only.
pub fn check_loopback(uri: &str) -> anyhow::Result<()> {
    let parsed =
        AMQPUri::from_str(uri).map_err(|e| anyhow::anyhow!("invalid AMQP URI {uri:?}: {e}"))?;
    let host = parsed
        .authority
        .host
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false);
    if !loopback {
        bail!("refusing non-loopback broker address {host:?}: bourse-perf targets loopback only");
    }
    Ok(())
}

pub async fn connect(uri: &str, name: String) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(uri, props)
        .await
        .with_context(|| format!("connecting to {uri}"))
}

/// Expands `{i}` in a template.
pub fn expand(template: &str, i: usize) -> String {
    if template.contains("{i}") {
        template.replace("{i}", &i.to_string())
    } else {
        template.to_owned()
    }
}

/// Splits KEY=VALUE.
pub fn split_kv(kv: &str) -> anyhow::Result<(&str, &str)> {
    kv.split_once('=')
        .with_context(|| format!("expected KEY=VALUE, got {kv:?}"))
}

/// Builds a field table from KEY=VALUE pairs with `{i}` expanded. Values are long strings,
/// except that `x-`-prefixed keys with an integer value become signed 64-bit integers (queue
/// arguments such as x-max-length must be numbers).
pub fn table(pairs: &[String], i: usize) -> anyhow::Result<FieldTable> {
    let mut table = FieldTable::default();
    for kv in pairs {
        let (k, v) = split_kv(kv)?;
        let v = expand(v, i);
        let value = match v.parse::<i64>() {
            Ok(n) if k.starts_with("x-") => AMQPValue::LongLongInt(n),
            _ => AMQPValue::LongString(LongString::from(v)),
        };
        table.insert(ShortString::from(k.to_owned()), value);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_brokers() {
        for ok in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqp://localhost:5673",
            "amqp://127.0.0.2",
            "amqp://[::1]:5672",
        ] {
            assert!(check_loopback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "amqp://10.0.0.1:5672",
            "amqp://example.com",
            "amqp://192.168.1.2",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_and_tables() {
        assert_eq!(expand("perf.k{i}.*", 7), "perf.k7.*");
        assert_eq!(expand("plain", 7), "plain");
        let t = table(
            &["x-max-length=10".into(), "k=v{i}".into(), "n=5".into()],
            3,
        )
        .unwrap();
        let get = |k: &str| t.inner().get(&ShortString::from(k.to_owned())).cloned();
        assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(10)));
        assert_eq!(get("k"), Some(AMQPValue::LongString("v3".into())));
        assert_eq!(get("n"), Some(AMQPValue::LongString("5".into())));
        assert!(table(&["novalue".into()], 0).is_err());
    }
}
