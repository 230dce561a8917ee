DROP VIEW rc_graph_edges;
DROP TABLE rc_erased_guests, rc_erasures, rc_feedback, rc_offers, rc_recommendations,
           rc_features, rc_affinity, rc_interests, rc_popularity, rc_events, rc_item_relations,
           rc_items;
