DROP TABLE ticks;
DROP TABLE effects;
DROP TABLE sent;
