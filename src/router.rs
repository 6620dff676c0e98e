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

    /// The provider for attempt number `attempt` (1-based): each transient
    /// failure moves to the next provider of the route, wrapping around.
    pub fn provider_for_attempt<'a>(
        &'a self,
        recipient: &Recipient,
        attempt: u32,
    ) -> Option<&'a str> {
        let route = self.route(recipient)?;
        let n = route.providers.len();
        let i = usize::try_from(attempt.max(1) - 1).unwrap_or(0) % n.max(1);
        route.providers.get(i).map(String::as_str)
    }

    /// Every route, for `tuma check`.
    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }
}
