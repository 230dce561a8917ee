-- recommenderd's marketing half (docs/marketing.md): email templates with versions, A/B
-- variant assignments per guest and campaign, and the emails generated (their ids link the
-- served recommendation list, so feedback on it counts as the variant's clicks and
-- conversions).

-- One row per template version; the newest is the template. `template` is the packed
-- hospitality.marketing.v1.EmailTemplate as upserted (output-only fields unset).
CREATE TABLE mk_templates (
    template_id text        NOT NULL,
    version     bigint      NOT NULL,
    name        text        NOT NULL,
    active      boolean     NOT NULL,
    template    bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version)
);

-- The variant a guest got for a campaign and template: the first assignment holds for every
-- later email of that campaign (campaign_id '' is the template's default campaign).
CREATE TABLE mk_assignments (
    guest_id    uuid        NOT NULL,
    campaign_id text        NOT NULL,
    template_id text        NOT NULL,
    variant_id  text        NOT NULL,
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (guest_id, campaign_id, template_id)
);

-- Emails generated (nothing is sent here). guest_id is NULL after an anonymizing erasure.
CREATE TABLE mk_emails (
    email_id          uuid PRIMARY KEY,
    guest_id          uuid,
    template_id       text        NOT NULL,
    template_version  bigint      NOT NULL,
    variant_id        text        NOT NULL DEFAULT '',
    campaign_id       text        NOT NULL DEFAULT '',
    recommendation_id uuid,
    generated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mk_emails_variant ON mk_emails (template_id, variant_id);
CREATE INDEX mk_emails_guest ON mk_emails (guest_id);
CREATE INDEX mk_emails_recommendation ON mk_emails (recommendation_id);
