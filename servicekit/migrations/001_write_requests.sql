-- One row per applied write: a repeated request_id replays result_id, and a
-- request_id reused with other arguments is a conflict (servicekit/idempotency.py).
-- Runs on MySQL 8.4 and MariaDB 10.11; utf8mb4_bin compares request ids exactly.
-- IF NOT EXISTS and MODIFY: databases created before the kit had migrations
-- of its own already hold this table, with a method column of 32 characters.

CREATE TABLE IF NOT EXISTS write_requests (
  request_id VARCHAR(64) NOT NULL PRIMARY KEY,
  method VARCHAR(255) NOT NULL,
  arguments_sha256 CHAR(64) NOT NULL,
  result_id BIGINT NOT NULL,
  created_at_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

ALTER TABLE write_requests MODIFY method VARCHAR(255) NOT NULL;
