"""Operations: health/metrics endpoint, logging, retention, systemd units."""
