/* fleet: see include/fleet.h */
