-- The owned schema (DESIGN.md section 2): column-compatible with the control plane's tables for
-- every column the service reads. Every other column has a default or is nullable, so a row can
-- be inserted with just the listed columns. Additive only: never edit after release.

CREATE TYPE provisioner_job_type AS ENUM (
    'template_version_import',
    'workspace_build',
    'template_version_dry_run'
);

CREATE TABLE workspaces (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    name varchar(64) NOT NULL DEFAULT '',
    deleted boolean NOT NULL DEFAULT false
);

CREATE TABLE provisioner_jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    type provisioner_job_type NOT NULL
);

CREATE TABLE workspace_builds (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    workspace_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    build_number integer NOT NULL,
    job_id uuid NOT NULL UNIQUE REFERENCES provisioner_jobs (id) ON DELETE CASCADE,
    UNIQUE (workspace_id, build_number)
);

CREATE TABLE workspace_resources (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    job_id uuid NOT NULL REFERENCES provisioner_jobs (id) ON DELETE CASCADE,
    name varchar(64) NOT NULL DEFAULT ''
);

CREATE INDEX workspace_resources_job_id_idx ON workspace_resources (job_id);

CREATE TABLE workspace_agents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    name varchar(64) NOT NULL,
    resource_id uuid NOT NULL REFERENCES workspace_resources (id) ON DELETE CASCADE,
    auth_token uuid NOT NULL DEFAULT gen_random_uuid(),
    auth_instance_id varchar,
    parent_id uuid REFERENCES workspace_agents (id) ON DELETE CASCADE,
    deleted boolean NOT NULL DEFAULT false
);

CREATE INDEX workspace_agents_resource_id_idx ON workspace_agents (resource_id);

-- The resolver's entry point: one index probe per authentication.
CREATE INDEX workspace_agents_auth_instance_id_deleted_idx
    ON workspace_agents (auth_instance_id, deleted);
