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
