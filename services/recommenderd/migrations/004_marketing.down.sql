DROP TABLE mk_emails, mk_assignments, mk_templates;
