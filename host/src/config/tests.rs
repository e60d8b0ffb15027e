//! The configuration's merge rules: flags over environment over file, checks, seeds.

use super::*;
use clap::Parser;

fn with_file(toml: &str, args: &[&str]) -> Result<Config, ConfigError> {
    let path = std::env::temp_dir().join(format!(
        "bourse-config-test-{}-{}.toml",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&path, toml).expect("write config");
    let path_arg = path.to_string_lossy().into_owned();
    let mut argv = vec!["bourse", "--config", path_arg.as_str()];
    argv.extend_from_slice(args);
    let result = Config::from_cli(Cli::try_parse_from(argv).expect("flags parse"));
    let _ = std::fs::remove_file(&path);
    result
}

#[test]
fn tls_needs_listen_cert_and_key_together() {
    let config = with_file(
        "tls_listen = \"127.0.0.1:5671\"\ntls_cert_file = \"c.pem\"\n",
        &[
            "--tls-key-file",
            "k.pem",
            "--tls-verify-peer",
            "true",
            "--tls-ca-file",
            "ca.pem",
        ],
    )
    .expect("config");
    let tls = config.tls.expect("TLS settings");
    assert_eq!(tls.listen, SocketAddr::from(([127, 0, 0, 1], 5671)));
    assert_eq!(tls.key_file, PathBuf::from("k.pem"));
    assert!(tls.verify_peer && !tls.fail_if_no_peer_cert);
    assert_eq!(tls.reload_poll_ms, 5000);
    assert!(with_file("", &[]).expect("config").tls.is_none());
    let error = with_file("tls_listen = \"127.0.0.1:5671\"\n", &[]).unwrap_err();
    assert!(error.to_string().contains("tls_key_file"), "{error}");
    let error = with_file(
        "tls_listen = \"127.0.0.1:5671\"\ntls_cert_file = \"c\"\ntls_key_file = \"k\"\ntls_verify_peer = true\n",
        &[],
    )
    .unwrap_err();
    assert!(error.to_string().contains("tls_ca_file"), "{error}");
}

#[test]
fn users_come_with_a_clear_password_or_a_rabbitmq_hash_and_tags() {
    let hash = crate::auth::PasswordHash::new("pw", crate::auth::Algorithm::Sha512)
        .expect("hash")
        .to_rabbit();
    let toml = format!(
        "[[users]]\nname = \"a\"\npassword = \"s\"\ntags = [\"administrator\"]\n\
         [[users]]\nname = \"b\"\npassword_hash = \"{hash}\"\n\
         hashing_algorithm = \"rabbit_password_hashing_sha512\"\n"
    );
    let config = with_file(&toml, &[]).expect("valid users");
    assert_eq!(config.users[0].tags, ["administrator"]);
    assert!(matches!(
        config.users[1].credential,
        Credential::Hash { .. }
    ));
    assert!(
        !format!("{:?}", config.users).contains("\"s\""),
        "no clear password in Debug"
    );
    for bad in [
        "[[users]]\nname = \"a\"\n",
        "[[users]]\nname = \"a\"\npassword = \"s\"\npassword_hash = \"\"\n",
    ] {
        assert!(with_file(bad, &[]).is_err(), "{bad}");
    }
    let wrong = format!("[[users]]\nname = \"b\"\npassword_hash = \"{hash}\"\n");
    assert!(
        with_file(&wrong, &[]).is_err(),
        "a SHA-512 hash read as SHA-256 is refused"
    );
}

#[test]
fn file_values_apply_and_flags_override_them() {
    let config = with_file(
        "listen = \"127.0.0.1:5999\"\nheartbeat_secs = 5\n",
        &["--heartbeat-secs", "7"],
    )
    .expect("valid config");
    assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 5999)));
    assert_eq!(config.heartbeat_secs, 7, "the flag wins over the file");
    assert_eq!(config.frame_max_bytes, 131_072, "defaults fill the rest");
}

#[test]
fn unknown_keys_are_an_error() {
    let error = with_file("listen_addr = \"127.0.0.1:5999\"\n", &[]).unwrap_err();
    assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
    assert!(error.to_string().contains("listen_addr"), "{error}");
}

#[test]
fn frame_max_below_the_protocol_minimum_is_refused() {
    let error = with_file("frame_max_bytes = 1024\n", &[]).unwrap_err();
    assert!(matches!(error, ConfigError::Invalid(_)), "{error}");
}

#[test]
fn memory_watermark_defaults_to_forty_percent_without_bytes() {
    let config = with_file("", &[]).expect("valid config");
    assert_eq!(config.memory_high_watermark, 0.4);
    assert_eq!(config.memory_high_watermark_bytes, None);
}

#[test]
fn memory_watermark_keys_come_from_the_file_and_flags_override_them() {
    let config = with_file(
        "memory_high_watermark = 0.5\nmemory_high_watermark_bytes = 1073741824\n",
        &[],
    )
    .expect("valid config");
    assert_eq!(config.memory_high_watermark, 0.5);
    assert_eq!(config.memory_high_watermark_bytes, Some(1 << 30));

    let config = with_file(
        "memory_high_watermark = 0.5\nmemory_high_watermark_bytes = 1073741824\n",
        &[
            "--memory-high-watermark",
            "0.25",
            "--memory-high-watermark-bytes",
            "4096",
        ],
    )
    .expect("valid config");
    assert_eq!(config.memory_high_watermark, 0.25, "the flag wins");
    assert_eq!(
        config.memory_high_watermark_bytes,
        Some(4096),
        "the flag wins"
    );

    // A whole number is a valid TOML value for the fraction.
    let config = with_file("memory_high_watermark = 1\n", &[]).expect("valid config");
    assert_eq!(config.memory_high_watermark, 1.0);
}

#[test]
fn memory_watermark_out_of_range_is_refused() {
    for toml in [
        "memory_high_watermark = 0.0\n",
        "memory_high_watermark = -0.1\n",
        "memory_high_watermark = 1.01\n",
        "memory_high_watermark = nan\n",
        "memory_high_watermark_bytes = 0\n",
    ] {
        match with_file(toml, &[]) {
            Err(ConfigError::Invalid(text)) => {
                assert!(text.contains("memory_high_watermark"), "{toml}: {text}")
            }
            other => panic!("{toml}: expected Invalid, got {other:?}"),
        }
    }
    let error = with_file("memory_high_watermark_bytes = -1\n", &[]).unwrap_err();
    assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
}

#[test]
fn memory_watermark_flags_read_their_environment_variables() {
    use clap::CommandFactory;
    let command = Cli::command();
    for (id, env) in [
        ("memory_high_watermark", "BOURSE_MEMORY_HIGH_WATERMARK"),
        (
            "memory_high_watermark_bytes",
            "BOURSE_MEMORY_HIGH_WATERMARK_BYTES",
        ),
    ] {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == id)
            .unwrap_or_else(|| panic!("no flag {id}"));
        assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env), "{id}");
    }
}

#[test]
fn management_tls_needs_the_amqps_certificate() {
    let refused = Config::from_cli(
        Cli::try_parse_from(["bourse", "--management-tls-listen", "127.0.0.1:15671"])
            .expect("flags parse"),
    );
    assert!(
        matches!(&refused, Err(ConfigError::Invalid(why)) if why.contains("management_tls_listen")),
        "{refused:?}"
    );
}

#[test]
fn log_settings_come_from_the_file_or_the_flags() {
    let config = with_file("log_level = \"debug\"\nlog_format = \"json\"\n", &[]).unwrap();
    assert_eq!(config.log_level, "debug");
    assert_eq!(config.log_format, LogFormat::Json);
    let config = with_file("log_format = \"json\"\n", &["--log-format", "text"]).unwrap();
    assert_eq!(config.log_format, LogFormat::Text);
    assert!(with_file("log_format = \"xml\"\n", &[]).is_err());
    let config = with_file("", &["--management-sample-interval-ms", "1"]).unwrap();
    assert_eq!(config.management_sample_interval_ms, 100, "floored");
}

#[test]
fn cluster_settings_come_from_the_file_or_flags_and_are_checked() {
    let dir = std::env::temp_dir().join(format!(
        "bourse-config-cluster-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret = dir.join("secret");
    std::fs::write(&secret, "sixteen bytes or more\n").expect("secret");
    let file = format!(
        "[cluster]\nnode_name = \"n1\"\nlisten = \"127.0.0.1:25672\"\n\
         peers = [\"n1=127.0.0.1:25672\", \"n2=127.0.0.1:25673\"]\nsecret_file = {:?}\n",
        secret.to_string_lossy()
    );
    let cluster = with_file(&file, &[])
        .expect("config")
        .cluster
        .expect("cluster settings");
    assert_eq!(cluster.node_name, "n1");
    assert_eq!(cluster.peers.len(), 2);
    assert!(cluster.form);
    assert_eq!(cluster.secret, "sixteen bytes or more", "trimmed");
    // Flags override the file's peers; this node is added to them.
    let cluster = with_file(&file, &["--cluster-peers", "n2=127.0.0.1:25673"])
        .expect("config")
        .cluster
        .expect("cluster settings");
    assert_eq!(
        cluster.peers.keys().collect::<Vec<_>>(),
        ["n1", "n2"],
        "this node joins its own peer list"
    );
    // No node name: a single node.
    assert!(with_file("", &[]).expect("config").cluster.is_none());
    let refused = |args: &[&str]| match with_file("", args) {
        Err(ConfigError::Invalid(reason)) => reason,
        other => panic!("{args:?} should be refused: {other:?}"),
    };
    let secret_arg = secret.to_string_lossy().into_owned();
    let base = ["--node-name", "n1", "--cluster-listen", "127.0.0.1:25672"];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut all: Vec<&str> = base.to_vec();
        all.extend_from_slice(extra);
        all
    };
    assert!(refused(&with(&[])).contains("shared secret"));
    let mut args = with(&["--cluster-secret-file"]);
    args.push(&secret_arg);
    args.extend(["--cluster-peers", "n1=127.0.0.1:1"]);
    assert!(refused(&args).contains("is given as"));
    let mut args = with(&["--cluster-secret-file"]);
    args.push(&secret_arg);
    args.extend(["--cluster-peers", "bad name=127.0.0.1:1"]);
    assert!(refused(&args).contains("node name"));
    assert!(refused(&["--cluster-listen", "127.0.0.1:1"]).contains("node_name"));
    let short = dir.join("short");
    std::fs::write(&short, "short").expect("short secret");
    let short_arg = short.to_string_lossy().into_owned();
    let mut args = with(&["--cluster-secret-file"]);
    args.push(&short_arg);
    assert!(refused(&args).contains("at least 16 bytes"));
    let _ = std::fs::remove_dir_all(&dir);
}
