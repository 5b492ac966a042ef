//! Member addresses: `host:port`, where host may be a DNS name (stable
//! names such as a StatefulSet pod's) or an IP address.

/// Checks a `host:port` peer address; the error says what is wrong with it.
pub fn validate_addr(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    if host.is_empty() {
        return Err(format!("{addr:?} has an empty host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{addr:?} has an invalid port {port:?}")),
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
    {
        return Err(format!("{addr:?} has an invalid host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ips_pass_and_the_error_names_the_problem() {
        for ok in ["127.0.0.1:8100", "demo-0.demo.ns.svc:8100", "[::1]:8100"] {
            assert_eq!(validate_addr(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("localhost", "not host:port"),
            (":8100", "empty host"),
            ("a:0", "invalid port"),
            ("a:99999", "invalid port"),
            ("a b:1", "invalid host"),
        ] {
            let e = validate_addr(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
