//! Switchyard ratelimit filter (under construction).
