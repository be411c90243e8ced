//! Wire formats (sans-IO).
