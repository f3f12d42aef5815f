//! The whole of loading: text -> [`super::file`] -> [`super::validate`] -> a [`Config`], or every
//! error, the structural ones and the value checks together.

use std::path::Path;

use super::errors::{ConfigError, ConfigErrors};
use super::model::Config;
use super::{file, read, validate};

/// Parses and validates a whole config document.
pub fn parse_str(text: &str) -> Result<Config, ConfigErrors> {
    let parsed = file::parse(text).map_err(ConfigErrors)?;
    let mut errors = parsed.errors;
    match validate::validate(parsed.file) {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(more) => {
            // What the checks say about a stand-in is not the user's mistake: the structural
            // error at that place already is.
            errors.extend(more.into_iter().filter(|e| !parsed.patches.hides(&e.path)));
            Err(ConfigErrors(errors))
        }
    }
}

/// Reads and validates a config file; the text is returned too, so a reload can skip an
/// unchanged file.
pub fn load_file(path: &Path) -> Result<(Config, String), ConfigErrors> {
    let text = read_text(path)?;
    parse_str(&text).map(|c| (c, text))
}

/// The text of the config file at `path`: a regular file of at most
/// [`super::read::MAX_FILE_BYTES`], in UTF-8.
pub fn read_text(path: &Path) -> Result<String, ConfigErrors> {
    let error = |why: String| {
        ConfigErrors(vec![ConfigError::new(
            path.display().to_string(),
            format!("cannot read the config file: {why}"),
        )])
    };
    let bytes = read::read_regular(path).map_err(error)?;
    String::from_utf8(bytes).map_err(|e| {
        error(format!(
            "it is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::*;
    use crate::config::validate;

    const GOOD: &str = r#"
listeners: [{ name: public, bind: "127.0.0.1:8080" }]
upstreams:
  blue: { backends: ["127.0.0.1:9001", "localhost:9002"], connect_timeout: 250ms }
  green: { backends: ["127.0.0.1:9003"] }
routes:
  - name: shop
    match: { host: "*.Example.com", path_prefix: /shop, headers: { x-region: eu } }
    split: [{ upstream: blue, weight: 95 }, { upstream: green, weight: 5 }]
    sticky: { cookie: session }
    override_header: x-switchyard-upstream
"#;

    #[test]
    fn a_good_config_gets_its_defaults() {
        let c = parse_str(GOOD).unwrap();
        assert_eq!(c.admin.bind.to_string(), DEFAULT_ADMIN_BIND);
        let r = &c.routes[0];
        assert_eq!(r.matcher.host, HostMatch::Suffix(".example.com".into()));
        assert_eq!(r.timeout, DEFAULT_ROUTE_TIMEOUT);
        assert_eq!(r.weights(), [95, 5]);
        assert_eq!(r.sticky, Some(StickyKey::Cookie("session".into())));
        let blue = c.upstream("blue").unwrap();
        assert_eq!(blue.transport.connect_timeout.as_millis(), 250);
        assert_eq!(blue.backends[1].as_str(), "localhost:9002");
    }

    #[test]
    fn every_semantic_error_is_reported_with_its_path() {
        let text = r#"
listeners: [{ bind: "localhost:8080" }]
upstreams:
  blue: { backends: ["10.0.0.1"] }
routes:
  - { name: a, split: [{ upstream: bleu, weight: 1 }] }
  - { name: a, split: [{ upstream: blue, weight: 0 }] }
"#;
        let errs = parse_str(text).unwrap_err().0;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "listeners[0].bind",
                "upstreams.blue.backends[0]",
                "routes[0].split[0].upstream",
                "routes[1].name",
                "routes[1].split",
            ],
            "{errs:#?}"
        );
        assert!(errs[2].message.contains("did you mean `blue`?"));
    }

    #[test]
    fn backend_addresses_must_be_host_port() {
        for bad in [
            "10.0.0.1",
            "http://a:80",
            "a:0",
            "a:80/x",
            ":80",
            "user@a:80",
        ] {
            assert!(validate::backend_addr(bad).is_err(), "{bad}");
        }
        for good in ["10.0.0.1:80", "svc.ns:8080", "[::1]:80"] {
            assert!(validate::backend_addr(good).is_ok(), "{good}");
        }
    }
}
