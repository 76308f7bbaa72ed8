//! What a browser can be made to ask. A page of any site can make the browser of someone who
//! runs Meshploy send requests to it: to a name it rebinds to `127.0.0.1` (DNS rebinding, which
//! reads the answers, as of a local `up --anonymous-read`), or as a form posted from elsewhere
//! (cross-site request forgery, such as logging the console into the attacker's token). So the
//! API and the console answer only host names they are told are theirs, and take an unsafe
//! method (a POST) only from their own origin.
//!
//! Health checks and webhooks are exempt: machines call them under any name, a webhook is
//! signed, and neither reads or changes anything a browser could abuse.

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;

use crate::{ApiError, AppState};

/// The host names answered: `localhost` and its subdomains, any IP address (a rebinding
/// attack needs a name its attacker controls), and the names configured (`--public-url`'s
/// host, `--allow-host`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hosts {
    names: Vec<String>,
}

impl Hosts {
    /// The default names, `public_url`'s host (if given) and `names`.
    pub fn new(public_url: Option<&str>, names: &[String]) -> Hosts {
        let public = public_url.map(|url| {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            rest.split(['/', '?', '#']).next().unwrap_or_default()
        });
        Hosts {
            names: public
                .into_iter()
                .chain(names.iter().map(String::as_str))
                .map(|host| name_of(host).to_owned())
                .filter(|name| !name.is_empty())
                .collect(),
        }
    }

    /// Whether `host` (a `Host` header: a name or address, perhaps with a port) is answered.
    pub fn allows(&self, host: &str) -> bool {
        let name = name_of(host);
        if name.parse::<std::net::IpAddr>().is_ok() {
            return true;
        }
        let name = name.to_ascii_lowercase();
        name == "localhost"
            || name.ends_with(".localhost")
            || self.names.iter().any(|n| n.eq_ignore_ascii_case(&name))
    }
}

/// A `Host`'s name or address: without its port, brackets or final dot.
fn name_of(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    name.strip_suffix('.').unwrap_or(name)
}

/// Refuses a request for a host name that is not ours (421), and an unsafe one from another
/// site (403): `Sec-Fetch-Site` other than `same-origin` or `none`, or an `Origin` that is not
/// the request's own host. A request without either header is not a browser's.
pub async fn guard(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if let Some(host) = host
        && !state.hosts.allows(host)
    {
        return Err(ApiError::Misdirected(format!(
            "this server does not answer to `{}`; name it with --allow-host (or --public-url) if it is this server's",
            name_of(host)
        )));
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe && cross_site(headers, host) {
        return Err(ApiError::Forbidden(
            "a request from another site's page is refused".into(),
        ));
    }
    Ok(next.run(request).await)
}

/// Whether a browser says the request comes from another site than `host`.
fn cross_site(headers: &HeaderMap, host: Option<&str>) -> bool {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return true;
    }
    match header(ORIGIN.as_str()) {
        None => false,
        Some(origin) => {
            let authority = origin.split_once("://").map(|(_, rest)| rest);
            authority.is_none_or(|a| host.is_none_or(|h| !a.eq_ignore_ascii_case(h)))
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn loopback_addresses_and_configured_names_are_answered_and_no_other_name() {
        let hosts = Hosts::new(
            Some("https://Meshploy.example.com:8443/console"),
            &["meshploy.internal.".to_owned()],
        );
        for good in [
            "localhost",
            "LOCALHOST:8001",
            "app.localhost",
            "127.0.0.1:8001",
            "[::1]:8001",
            "10.1.2.3",
            "meshploy.example.com",
            "meshploy.example.com:443",
            "meshploy.internal",
            "meshploy.internal.:80",
        ] {
            assert!(hosts.allows(good), "{good}");
        }
        for bad in [
            "attacker.example",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "example.com",
            "meshploy.example.com.attacker.example",
            "",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
        assert!(!Hosts::default().allows("meshploy.example.com"));
    }

    #[test]
    fn a_post_from_another_origin_is_cross_site_and_one_without_headers_is_not() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        let host = Some("127.0.0.1:8001");
        assert!(!cross_site(&headers(&[]), host), "curl, the CLI");
        assert!(!cross_site(
            &headers(&[
                ("origin", "http://127.0.0.1:8001"),
                ("sec-fetch-site", "same-origin")
            ]),
            host
        ));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "none")]), host));
        for attack in [
            headers(&[("origin", "https://attacker.example")]),
            headers(&[("origin", "null")]),
            headers(&[("origin", "http://127.0.0.1:9999")]),
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
        ] {
            assert!(cross_site(&attack, host), "{attack:?}");
        }
        assert!(cross_site(&headers(&[("origin", "http://x")]), None));
    }
}
