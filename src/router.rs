//! Routing: which providers carry a message, primary first.

use crate::config::{Config, RouteConfig};
use crate::domain::Recipient;

/// The routing table, built from the configuration.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<RouteConfig>,
}

impl Router {
    /// Builds the table from validated routes.
    pub fn new(config: &Config) -> Router {
        Router {
            routes: config.routes.clone(),
        }
    }

    /// The route for a recipient: for SMS the longest matching prefix, else the
    /// channel's default route.
    pub fn route(&self, recipient: &Recipient) -> Option<&RouteConfig> {
        let channel = recipient.channel();
        let to = recipient.as_str();
        self.routes
            .iter()
            .filter(|r| r.channel == channel)
            .filter(|r| r.prefix.as_deref().is_none_or(|p| to.starts_with(p)))
            .max_by_key(|r| r.prefix.as_deref().map_or(0, str::len))
    }

    /// The route's providers in the order attempt number `attempt` (1-based)
    /// should try them: each transient failure moves to the next provider of
    /// the route, wrapping around; the rest follow, for when a circuit is open.
    pub fn providers_for_attempt<'a>(
        &'a self,
        recipient: &Recipient,
        attempt: u32,
    ) -> Vec<&'a str> {
        let Some(route) = self.route(recipient) else {
            return Vec::new();
        };
        let n = route.providers.len();
        let first = usize::try_from(attempt.max(1) - 1).unwrap_or(0) % n.max(1);
        (0..n)
            .map(|k| route.providers[(first + k) % n].as_str())
            .collect()
    }

    /// Every route, for `tuma check`.
    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }
}
