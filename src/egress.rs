//! Where tuma's outbound HTTP calls to addresses others give it (webhook
//! endpoints) may go (SSRF). Imports nothing of tuma's: the configuration
//! and the webhook dispatcher both read it.
//!
//! Where webhooks may go. An endpoint is `https://`, or `http://` to
//! a loopback address (tests, sidecars). Every address its host resolves to
//! is checked, at registration and again at each connection (the client's
//! resolver, so the address connected to is the one checked: no DNS
//! rebinding): private, shared, link-local (the cloud metadata service),
//! unspecified, multicast, documentation and reserved ranges are refused
//! unless `webhooks.allow_ranges` names a range holding the address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

/// An address range such as `10.0.0.0/8` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("`{s}` is not an address range such as \"10.0.0.0/8\"");
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("`{s}`: a prefix length is at most {max}"));
        }
        let cidr = Cidr { net, prefix };
        if !cidr.contains(net) || cidr.masked(net) != net {
            return Err(format!("`{s}` has bits set past its prefix length"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        }
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.is_ipv4() == ip.is_ipv4() && self.masked(ip) == self.net
    }
}

/// Why an address is refused, or `None` when any endpoint may use it.
/// Loopback is allowed (tests, sidecars on the same host).
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                None
            } else if v6.is_unspecified() {
                Some("the unspecified address")
            } else if seg[0] == 0x64 && seg[1] == 0xff9b {
                // NAT64: the IPv4 address inside.
                let [a, b] = seg[6].to_be_bytes();
                let [c, d] = seg[7].to_be_bytes();
                forbidden_v4(Ipv4Addr::new(a, b, c, d))
            } else if seg[0] == 0x2002 {
                // 6to4: the IPv4 address inside.
                let [a, b] = seg[1].to_be_bytes();
                let [c, d] = seg[2].to_be_bytes();
                forbidden_v4(Ipv4Addr::new(a, b, c, d))
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("a cloud metadata address")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                Some("a private (unique local) address")
            } else if seg[0] & 0xffc0 == 0xfe80 || seg[0] & 0xffc0 == 0xfec0 {
                Some("a link-local address")
            } else if seg[0] & 0xff00 == 0xff00 {
                Some("a multicast address")
            } else if seg[0] == 0x2001 && seg[1] == 0xdb8 {
                Some("a documentation address")
            } else if seg[..6] == [0, 0, 0, 0, 0, 0] {
                Some("an IPv4-compatible address")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = v4.octets();
    if v4.is_loopback() {
        None
    } else if v4 == Ipv4Addr::new(169, 254, 169, 254) || v4 == Ipv4Addr::new(100, 100, 100, 200) {
        Some("a cloud metadata address")
    } else if v4.is_private() {
        Some("a private address")
    } else if v4.is_link_local() {
        Some("a link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if a == 0 {
        Some("an address of this network (0.0.0.0/8)")
    } else if v4.is_broadcast() || a >= 240 {
        Some("a reserved address")
    } else if v4.is_multicast() {
        Some("a multicast address")
    } else if v4.is_documentation() {
        Some("a documentation address")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("a benchmarking address")
    } else if a == 192 && b == 0 && c == 0 {
        Some("an IETF protocol assignment address")
    } else {
        None
    }
}

/// An endpoint URL refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Which addresses webhooks may reach.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Ranges allowed although [`forbidden`] refuses them.
    pub allow: Vec<Cidr>,
}

impl Policy {
    /// Refuses `ip` unless it is allowed (see [`forbidden`]).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        match forbidden(ip) {
            Some(_) if self.allow.iter().any(|r| r.contains(ip)) => Ok(()),
            Some(why) => Err(Refused(format!(
                "{ip} is {why}; webhooks do not go there unless [webhooks] allow_ranges names its range"
            ))),
            None => Ok(()),
        }
    }

    /// The URL parsed, if its form is acceptable: `https`, or `http` to
    /// loopback (`localhost` or a loopback address); no user or password;
    /// an address host checked with [`Policy::check_ip`].
    pub fn check_url(&self, text: &str) -> Result<reqwest::Url, Refused> {
        let url = reqwest::Url::parse(text.trim())
            .map_err(|e| Refused(format!("`{text}` is not a URL: {e}")))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused(
                "a webhook URL must not hold a user name or password".into(),
            ));
        }
        if url.fragment().is_some() {
            return Err(Refused("a webhook URL must not hold a #fragment".into()));
        }
        let host = url
            .host()
            .ok_or_else(|| Refused("a webhook URL needs a host".into()))?;
        let ip = match host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        };
        match url.scheme() {
            "https" => {}
            "http" => {
                let loopback = match (ip, url.host_str()) {
                    (Some(ip), _) => ip.is_loopback(),
                    (None, Some(name)) => name.eq_ignore_ascii_case("localhost"),
                    (None, None) => false,
                };
                if !loopback {
                    return Err(Refused(
                        "a webhook URL must be https (plain http only to loopback)".into(),
                    ));
                }
            }
            other => {
                return Err(Refused(format!("a webhook URL must be https, not {other}")));
            }
        }
        if let Some(ip) = ip {
            self.check_ip(ip)?;
        }
        Ok(url)
    }

    /// [`Policy::check_url`], then every address the host resolves to
    /// (registration; the dispatcher checks again at each connection).
    pub async fn check_url_resolved(&self, text: &str) -> Result<reqwest::Url, Refused> {
        let url = self.check_url(text)?;
        if let Some(url::Host::Domain(name)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(443);
            let addrs = self.resolve(name, port).await?;
            if url.scheme() == "http" && !addrs.iter().all(|a| a.ip().is_loopback()) {
                return Err(Refused(format!(
                    "{name} resolves to an address that is not loopback; plain http goes only to loopback"
                )));
            }
        }
        Ok(url)
    }

    /// The addresses of `name`, every one checked: one refused address
    /// refuses the name.
    pub async fn resolve(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| Refused(format!("{name} does not resolve: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(Refused(format!("{name} resolves to no address")));
        }
        for a in &addrs {
            self.check_ip(a.ip())
                .map_err(|Refused(why)| Refused(format!("{name} resolves to {why}")))?;
        }
        Ok(addrs)
    }
}

/// The HTTP client's resolver: the addresses it returns are the ones the
/// client connects to, so checking them here closes DNS rebinding.
#[derive(Debug, Clone)]
pub struct CheckedResolver(pub Arc<Policy>);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs = policy
                .resolve(name.as_str(), 0)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &Policy, url: &str) -> String {
        policy.check_url(url).unwrap_err().0
    }

    #[test]
    fn private_link_local_and_metadata_addresses_are_refused() {
        let p = Policy::default();
        for (url, why) in [
            ("https://10.1.2.3/hook", "private"),
            ("https://172.16.0.1/hook", "private"),
            ("https://192.168.1.1/hook", "private"),
            ("https://169.254.169.254/latest/meta-data", "metadata"),
            ("https://169.254.10.1/", "link-local"),
            ("https://100.64.0.1/", "carrier-grade"),
            ("https://0.0.0.0/", "0.0.0.0/8"),
            ("https://[::ffff:10.0.0.1]/", "private"),
            ("https://[fd00:ec2::254]/", "metadata"),
            ("https://[fc00::1]/", "unique local"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[::]/", "unspecified"),
            ("https://[64:ff9b::a9fe:a9fe]/", "metadata"),
            ("https://224.0.0.1/", "multicast"),
        ] {
            let e = refused(&p, url);
            assert!(e.contains(why), "{url}: {e}");
        }
        assert!(p.check_url("https://93.184.216.34/hook").is_ok());
        assert!(p.check_url("https://127.0.0.1:8443/hook").is_ok());
    }

    #[test]
    fn plain_http_goes_only_to_loopback() {
        let p = Policy::default();
        assert!(p.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(p.check_url("http://[::1]:9000/hook").is_ok());
        assert!(p.check_url("http://localhost:9000/hook").is_ok());
        assert!(refused(&p, "http://93.184.216.34/hook").contains("https"));
        assert!(refused(&p, "http://hooks.example.com/hook").contains("https"));
        assert!(refused(&p, "ftp://127.0.0.1/").contains("https"));
        assert!(refused(&p, "https://user:pw@127.0.0.1/").contains("password"));
        assert!(refused(&p, "not a url").contains("not a URL"));
    }

    #[test]
    fn a_named_range_is_allowed() {
        let p = Policy {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(p.check_url("https://10.1.2.3/hook").is_ok());
        assert!(refused(&p, "https://192.168.1.1/hook").contains("private"));
        assert!("10.0.0.1/8".parse::<Cidr>().is_err(), "host bits set");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    }

    #[tokio::test]
    async fn localhost_resolves_to_allowed_loopback() {
        let p = Policy::default();
        assert!(
            p.check_url_resolved("http://localhost:9/hook")
                .await
                .is_ok()
        );
    }
}
