//! The reload diff: which listeners a new configuration adds, removes,
//! changes or leaves alone, keyed by LISTEN address (SPEC "Reload"). Pure:
//! no sockets, no logging; the reactor applies the result.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::Entry;

/// What a reload does, listener by listener.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// New entries, in file order: start listening.
    pub added: Vec<Entry>,
    /// Running listeners (by their key) whose address is gone: stop
    /// listening; their open tunnels run on.
    pub removed: Vec<SocketAddr>,
    /// Running listeners whose settings differ: keep the socket, new
    /// tunnels use the new entry.
    pub changed: Vec<(SocketAddr, Entry)>,
    /// Running listeners whose settings are the same; the entry is the new
    /// one (its line number may have moved).
    pub unchanged: Vec<(SocketAddr, Entry)>,
}

/// Compares the `running` listeners (each keyed by the address the reactor
/// knows it by, with its entry) with the `wanted` entries of the new file.
/// Every wanted entry lands in exactly one of added, changed or unchanged;
/// every running key not wanted any more in removed. Lists other than
/// `added` follow the order of `running`.
pub fn diff<'a>(
    running: impl IntoIterator<Item = (SocketAddr, &'a Entry)>,
    wanted: Vec<Entry>,
) -> Diff {
    let mut wanted: HashMap<SocketAddr, Entry> =
        wanted.into_iter().map(|e| (e.listen, e)).collect();
    let mut out = Diff::default();
    for (key, entry) in running {
        match wanted.remove(&key) {
            None => out.removed.push(key),
            Some(new) if entry.same_settings(&new) => out.unchanged.push((key, new)),
            Some(new) => out.changed.push((key, new)),
        }
    }
    out.added = wanted.into_values().collect();
    out.added.sort_by_key(|e| e.line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn entries(text: &str) -> Vec<Entry> {
        config::parse_str(text, "t.conf", std::path::Path::new("."), &mut |_| {
            Err(std::io::Error::other("no files here"))
        })
        .expect("valid config")
        .entries
    }

    fn keyed(entries: &[Entry]) -> Vec<(SocketAddr, &Entry)> {
        entries.iter().map(|e| (e.listen, e)).collect()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let old = entries("2001 a.example 1\n2002 b.example 2 proxy.example 3128\n");
        let d = diff(keyed(&old), old.clone());
        assert!(d.added.is_empty() && d.removed.is_empty() && d.changed.is_empty());
        assert_eq!(d.unchanged.len(), 2);
    }

    #[test]
    fn added_removed_changed_and_unchanged_are_told_apart() {
        let old = entries("2001 a.example 1\n2002 b.example 2\n2003 c.example 3\n");
        let new = entries(
            "# moved down a line\n2001 a.example 1\n2003 c.example 30\n2005 e.example 5\n2004 d.example 4\n",
        );
        let d = diff(keyed(&old), new);
        assert_eq!(d.removed, vec![addr(2002)]);
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].0, addr(2003));
        assert_eq!(d.changed[0].1.dest.fixed().expect("fixed").port, 30);
        assert_eq!(d.unchanged.len(), 1);
        assert_eq!(d.unchanged[0].0, addr(2001));
        assert_eq!(d.unchanged[0].1.line, 2, "the new line number is kept");
        let added: Vec<u16> = d.added.iter().map(|e| e.listen.port()).collect();
        assert_eq!(added, vec![2005, 2004], "in file order");
    }

    #[test]
    fn a_changed_option_or_credential_is_a_change() {
        let old = entries("2001 a.example 1 proxy.example 3128 auth=u:p\n");
        for new in [
            "2001 a.example 1 proxy.example 3128 auth=u:q\n",
            "2001 a.example 1 proxy.example 3128 auth=u:p idle-timeout=5s\n",
            "2001 a.example 1 proxy.example 3129 auth=u:p\n",
            "2001 a.example 1\n",
        ] {
            let d = diff(keyed(&old), entries(new));
            assert_eq!(d.changed.len(), 1, "{new}");
            assert!(d.unchanged.is_empty() && d.added.is_empty() && d.removed.is_empty());
        }
    }

    #[test]
    fn listeners_are_keyed_by_the_reactors_address() {
        // A listener bound to port 0 is known by the port it got: an entry
        // for another address is an addition, the running one a removal.
        let old = entries("2001 a.example 1\n");
        let running = vec![(addr(40000), &old[0])];
        let d = diff(running, old.clone());
        assert_eq!(d.removed, vec![addr(40000)]);
        assert_eq!(d.added.len(), 1);
    }
}
