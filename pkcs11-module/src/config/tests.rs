use super::*;

#[test]
fn full_file_parses() {
    let config = Config::parse(
        r#"
        [card]
        readers = ["Virtual PCD 00 00"]
        short_apdus = true

        [[module]]
        kind = "file"
        path = "/m1"

        [[module]]
        kind = "file"
        path = "/m2"
        "#,
        Path::new("x.toml"),
    )
    .expect("parses");
    assert_eq!(
        config.card,
        Some(CardConfig {
            readers: Some(vec!["Virtual PCD 00 00".into()]),
            short_apdus: true
        })
    );
    assert_eq!(
        config.module,
        vec![
            ModuleConfig::File { path: "/m1".into() },
            ModuleConfig::File { path: "/m2".into() }
        ]
    );
}

#[test]
fn empty_card_table_means_all_readers() {
    let config = Config::parse("[card]\n", Path::new("x.toml")).expect("parses");
    assert_eq!(config, Config::default());
    let none = Config::parse("", Path::new("x.toml")).expect("parses");
    assert_eq!(none.card, None);
    assert!(none.module.is_empty());
}

#[test]
fn unknown_keys_and_kinds_are_errors() {
    for text in [
        "[card]\nreader = []\n",
        "colour = 1\n",
        "[[module]]\nkind = \"tape\"\npath = \"/x\"\n",
        "[[module]]\nkind = \"file\"\n",
        "[[module]]\nkind = \"file\"\npath = \"/x\"\nextra = 1\n",
    ] {
        let err = Config::parse(text, Path::new("bad.toml")).expect_err(text);
        assert!(err.to_string().contains("bad.toml"), "{err}");
    }
}

#[test]
fn softhsm_modules_parse_and_never_take_an_inline_pin() {
    let config = Config::parse(
        r#"
        [[module]]
        kind = "softhsm"
        token_label = "imprint module"
        pin_file = "/run/pin"

        [[module]]
        kind = "softhsm"
        library = "/lib/softhsm.so"
        token_label = "other"
        pin_file = "/run/other-pin"
        "#,
        Path::new("x.toml"),
    )
    .expect("parses");
    assert_eq!(
        config.module,
        vec![
            ModuleConfig::Softhsm {
                library: None,
                token_label: "imprint module".into(),
                pin_file: "/run/pin".into(),
            },
            ModuleConfig::Softhsm {
                library: Some("/lib/softhsm.so".into()),
                token_label: "other".into(),
                pin_file: "/run/other-pin".into(),
            },
        ]
    );
    for text in [
        "[[module]]\nkind = \"softhsm\"\ntoken_label = \"t\"\n",
        "[[module]]\nkind = \"softhsm\"\npin_file = \"/p\"\n",
        "[[module]]\nkind = \"softhsm\"\ntoken_label = \"t\"\npin_file = \"/p\"\npin = \"1234\"\n",
        "[[module]]\nkind = \"softhsm\"\ntoken_label = \"t\"\npin_file = \"/p\"\nsofthsm2_conf = \"/c\"\n",
    ] {
        let err = Config::parse(text, Path::new("bad.toml")).expect_err(text);
        assert!(err.to_string().contains("bad.toml"), "{err}");
    }
}
