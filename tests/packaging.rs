//! The files of the Debian package that live in the source tree (`debian/`,
//! `[package.metadata.deb]`), checked without building the package (that is
//! `.ci/deb-test`'s job): the packaged unit is the contrib one with the
//! binary in /usr/bin, the shipped tunnels.conf has no active entry (so the
//! package must not start the service), and the assets exist.

use std::fs;
use std::path::PathBuf;

fn read(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The unit without its comments and blank lines.
fn directives(unit: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_packaged_unit_is_the_contrib_unit_with_the_binary_in_usr_bin() {
    let contrib = directives(&read("contrib/httptunneling.service"));
    let packaged = directives(&read("debian/httptunneling.service"));
    let expected: Vec<String> = contrib
        .iter()
        .map(|l| l.replace("ExecStart=/usr/local/bin/", "ExecStart=/usr/bin/"))
        .collect();
    assert_eq!(
        packaged, expected,
        "debian/httptunneling.service must stay contrib/httptunneling.service \
         with ExecStart=/usr/bin/httptunneling: change both"
    );
    assert!(packaged
        .iter()
        .any(|l| l == "ExecStart=/usr/bin/httptunneling /etc/httptunneling/tunnels.conf"));
    for sandbox in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(packaged.iter().any(|l| l == sandbox), "{sandbox} missing");
    }
}

#[test]
fn the_shipped_tunnels_conf_has_only_comments() {
    // The package neither enables nor starts the service because this file
    // has no entry (the program refuses it); an active line here would need
    // that decision made again.
    let conf = read("debian/tunnels.conf");
    for (n, line) in conf.lines().enumerate() {
        let line = line.trim();
        assert!(
            line.is_empty() || line.starts_with('#'),
            "debian/tunnels.conf:{}: an active line in the shipped config: {line}",
            n + 1
        );
    }
    assert!(conf.contains("systemctl enable --now httptunneling"));
}

#[test]
fn the_deb_metadata_names_existing_assets_and_does_not_enable_the_unit() {
    let manifest = read("Cargo.toml");
    let meta = &manifest[manifest
        .find("[package.metadata.deb]")
        .expect("[package.metadata.deb] in Cargo.toml")..];
    assert!(meta.contains("systemd-units = { enable = false, start = false }"));
    assert!(meta.contains("maintainer-scripts = \"debian/\""));
    for asset in [
        "man/httptunneling.1",
        "man/httptunneling.conf.5",
        "debian/tunnels.conf",
        "README.md",
        "sample.conf",
    ] {
        assert!(
            meta.contains(&format!("[\"{asset}\"")),
            "{asset} not an asset"
        );
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(asset);
        assert!(path.is_file(), "{} missing", path.display());
    }
}
