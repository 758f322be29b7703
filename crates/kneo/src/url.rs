//! URLs without their secrets: userinfo becomes Basic auth, and what is
//! printed of a URL never carries a password or a query value.

/// Splits `user:password@` off `uri`, the way curl does: the URL without it,
/// and the `Authorization: Basic` value it stands for (percent-decoded,
/// marked sensitive). `None` when the URL has no userinfo.
#[cfg(feature = "client")]
pub(crate) fn take_userinfo(
    uri: &http::Uri,
) -> Result<Option<(http::Uri, http::HeaderValue)>, kneo_core::Error> {
    use base64::Engine as _;
    use http::uri::{Authority, Uri};
    use http::HeaderValue;
    use kneo_core::Error;
    use percent_encoding::percent_decode_str;

    let Some(authority) = uri.authority() else {
        return Ok(None);
    };
    let Some((userinfo, host)) = authority.as_str().rsplit_once('@') else {
        return Ok(None);
    };
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let decode = |s: &str| percent_decode_str(s).collect::<Vec<u8>>();
    let mut credentials = decode(user);
    credentials.push(b':');
    credentials.extend(decode(password));
    let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
        .map_err(|_| Error::invalid_request("the URL's credentials are not valid"))?;
    value.set_sensitive(true);

    let authority: Authority = host
        .parse()
        .map_err(|_| Error::invalid_request("the URL's host is not valid"))?;
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(authority);
    let stripped = Uri::from_parts(parts)
        .map_err(|_| Error::invalid_request("the URL is not valid without its credentials"))?;
    Ok(Some((stripped, value)))
}

/// `url` as it may be printed: without userinfo, and with every query value
/// replaced by `…` (`/runs?api_key=…&page=…`).
pub(crate) fn redacted(url: &str) -> String {
    let (before, query) = match url.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (url, None),
    };
    let mut out = match before.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority
                .rsplit_once('@')
                .map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => before.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let keys: Vec<&str> = query
            .split('&')
            .map(|pair| pair.split_once('=').map_or(pair, |(key, _)| key))
            .collect();
        out.push_str(
            &keys
                .iter()
                .map(|k| format!("{k}=…"))
                .collect::<Vec<_>>()
                .join("&"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "client")]
    #[test]
    fn userinfo_becomes_basic_auth() {
        use http::Uri;
        let uri: Uri = "http://alice:hunter%202@example.com:8080/v1?x=1"
            .parse()
            .expect("valid");
        let (stripped, auth) = take_userinfo(&uri).expect("ok").expect("has userinfo");
        assert_eq!(stripped, "http://example.com:8080/v1?x=1");
        // base64("alice:hunter 2")
        assert_eq!(auth, "Basic YWxpY2U6aHVudGVyIDI=");
        assert!(auth.is_sensitive());
        let plain: Uri = "http://example.com/".parse().expect("valid");
        assert!(take_userinfo(&plain).expect("ok").is_none());
    }

    #[test]
    fn redaction_drops_passwords_and_query_values() {
        assert_eq!(
            redacted("https://alice:hunter2@api.example.com/v1/runs?api_key=sk-1&page=2"),
            "https://api.example.com/v1/runs?api_key=…&page=…"
        );
        assert_eq!(
            redacted("/v1/runs?api_key=sk-secret-123"),
            "/v1/runs?api_key=…"
        );
        assert_eq!(redacted("http://host"), "http://host");
    }
}
