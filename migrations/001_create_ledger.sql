-- Accounts and the ledger of transfers. Runs on MySQL 8.4 and MariaDB 10.11.
-- utf8mb4_bin stores any Unicode (emoji included) and compares exactly.
-- (The record of applied writes, write_requests, is the kit's own migration.)

CREATE TABLE accounts (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  owner VARCHAR(200) NOT NULL,
  balance BIGINT NOT NULL DEFAULT 0,
  status TINYINT NOT NULL DEFAULT 1,
  created_at_ms BIGINT NOT NULL,
  updated_at_ms BIGINT NOT NULL,
  CONSTRAINT balance_not_negative CHECK (balance >= 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Account id 0 stands for "outside the ledger": deposits come from 0,
-- withdrawals go to 0.
CREATE TABLE transfers (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  from_account_id BIGINT NOT NULL,
  to_account_id BIGINT NOT NULL,
  amount BIGINT NOT NULL,
  request_id VARCHAR(64) NOT NULL,
  created_at_ms BIGINT NOT NULL,
  KEY transfers_by_from (from_account_id, id),
  KEY transfers_by_to (to_account_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
