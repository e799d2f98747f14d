"""Word tables of the demo store: platforms, accessories, genres and the parts of game titles."""
from __future__ import annotations

# name, share of users whose main platform it is, consoles, first-party accessories, gift-card store
PLATFORM_TABLE = (
    ("PlayStation 4", 0.30,
     ("PlayStation 4 Slim 1TB Console", "PlayStation 4 Pro 1TB Console", "PlayStation 4 500GB Console - Jet Black"),
     ("DualShock 4 Wireless Controller - Jet Black", "DualShock 4 Wireless Controller - Magma Red"),
     "PlayStation Store Gift Card"),
    ("Xbox One", 0.24,
     ("Xbox One S 1TB Console", "Xbox One X 1TB Console", "Xbox One S 500GB Console - Robot White"),
     ("Xbox Wireless Controller - Black", "Xbox Elite Wireless Controller"),
     "Xbox Gift Card"),
    ("Nintendo Switch", 0.18,
     ("Nintendo Switch Console with Neon Blue and Red Joy-Con", "Nintendo Switch Console with Gray Joy-Con"),
     ("Nintendo Switch Pro Controller", "Joy-Con (L/R) - Neon Red/Neon Blue"),
     "Nintendo eShop Gift Card"),
    ("PC", 0.14, (),
     ("Mechanical Gaming Keyboard with RGB Backlight", "Wired Optical Gaming Mouse - 12000 DPI"),
     "Steam Wallet Gift Card"),
    ("PlayStation 3", 0.07,
     ("PlayStation 3 Super Slim 250GB Console", "PlayStation 3 Slim 160GB Console"),
     ("DualShock 3 Wireless Controller - Black",),
     "PlayStation Store Gift Card"),
    ("Xbox 360", 0.07,
     ("Xbox 360 E 250GB Console", "Xbox 360 S 4GB Console"),
     ("Xbox 360 Wireless Controller - Glossy Black",),
     "Xbox Gift Card"),
)
PLATFORMS = tuple(p[0] for p in PLATFORM_TABLE)
PLATFORM_WEIGHT = {p[0]: p[1] for p in PLATFORM_TABLE}
GIFT_VALUES = ("$10", "$20", "$50", "$100")  # "... $10" is a strict prefix of "... $100"

# third-party accessory kinds: (kind, platforms it exists for ("*": all consoles), genre it suits)
ACCESSORY_KINDS = (
    ("Wireless Controller", ("PlayStation 4", "Xbox One", "Nintendo Switch", "PlayStation 3", "Xbox 360"), None),
    ("Controller Charging Station", ("PlayStation 4", "Xbox One", "PlayStation 3"), None),
    ("Charging Dock", ("Nintendo Switch",), None),
    ("Carrying Case", ("Nintendo Switch",), None),
    ("Tempered Glass Screen Protector", ("Nintendo Switch",), None),
    ("Gaming Headset", ("PlayStation 4", "Xbox One", "Nintendo Switch", "PC", "Xbox 360"), "Shooter"),
    ("Rechargeable Battery Pack", ("Xbox One", "Xbox 360"), None),
    ("Vertical Stand with Cooling Fan", ("PlayStation 4", "Xbox One"), None),
    ("Media Remote", ("PlayStation 4", "Xbox One", "PlayStation 3"), None),
    ("Racing Wheel and Pedals", ("PlayStation 4", "Xbox One", "PC", "PlayStation 3"), "Racing"),
    ("Arcade Fight Stick", ("PlayStation 4", "Xbox One", "PC"), "Fighting"),
    ("Wired Gamepad", ("PC",), None),
    ("Extended Gaming Mouse Pad", ("PC",), None),
    ("Flight Stick", ("PC",), "Simulation"),
    ("High Speed HDMI Cable", ("PlayStation 4", "Xbox One", "PlayStation 3", "Xbox 360"), None),
)
ACCESSORY_BRANDS = ("Arcwave", "Zentek", "Kordex", "Voltix", "ProGrip")
COLORS = ("Black", "White", "Red", "Blue", "Camo")

# genre: (share of users who like it, first words, second words); words separated by "|"
_GENRE_WORDS = {
    "Action": (0.12, "Savage|Rogue|Night|Steel|Crimson|Shadow|Rapid|Urban|Ronin|Outlaw",
                  "Assassin|Justice|Vendetta|Hunter|Revenge|Rampage|Blades|Legacy|Knight|Riot"),
    "Adventure": (0.08, "Lost|Hidden|Ancient|Forgotten|Sunken|Wild|Distant|Broken|Golden|Quiet",
                     "Island|Temple|Voyage|Odyssey|Horizon|Expedition|Relic|Compass|Tides|Ruins"),
    "RPG": (0.12, "Shadow|Crystal|Ember|Elder|Rune|Dragon|Mystic|Storm|Silver|Arcane",
               "Legends|Chronicles|Saga|Quest|Tales|Kingdoms|Realms|Throne|Covenant|Oath"),
    "Shooter": (0.12, "Iron|Steel|Ghost|Black|Delta|Zero|Titan|Omega|Venom|Hazard",
                   "Frontier|Protocol|Squadron|Warfare|Ops|Division|Vanguard|Strike|Siege|Recon"),
    "Racing": (0.09, "Galaxy|Turbo|Nitro|Thunder|Midnight|Street|Velocity|Apex|Redline|Neon",
                  "Racers|Rally|Drift|Circuit|Speedway|Motors|Grand Prix|Rush|Kart|Riders"),
    "Sports": (0.09, "Pro|Ultimate|Premier|All-Star|Champion|Elite|Total|World|Major|Super",
                  "Soccer|Football|Basketball|Hockey|Golf|Tennis|Baseball|Boxing|Skate|Snowboard"),
    "Fighting": (0.06, "Fist|Blade|Savage|Chaos|Crimson|Spirit|Tiger|Dragon|Steel|Street",
                    "Fury|Clash|Brawl|Showdown|Fighters|Warriors|Tournament|Rumble|Duel|Gauntlet"),
    "Strategy": (0.07, "Empire|Kingdom|Total|Iron|Star|Grand|Imperial|Rising|Ancient|Fallen",
                    "Conquest|Dominion|Tactics|Command|Dynasty|Colonies|Frontiers|Legions|Crusade|Warlords"),
    "Puzzle": (0.05, "Block|Brain|Color|Crystal|Pixel|Gem|Word|Bubble|Tile|Zen",
                  "Puzzle|Blocks|Match|Mania|Drop|Quest|Party|Twist|Logic|Garden"),
    "Platformer": (0.07, "Super|Mega|Pixel|Rocket|Captain|Jumping|Little|Turbo|Bouncy|Cosmic",
                      "Hero|Adventures|Land|World|Jump|Dash|Bros|Island|Quest|Kid"),
    "Horror": (0.06, "Dead|Silent|Hollow|Grave|Dark|Black|Blood|Night|Cursed|Pale",
                  "Asylum|Echoes|Harvest|Manor|Signal|Woods|Rites|Dread|Haunt|Vigil"),
    "Simulation": (0.07, "Farm|City|Flight|Truck|Train|Zoo|Space|Island|Pizza|Harbor",
                      "Simulator|Tycoon|Life|Builder|Manager|Story|Empire|Valley|Station|World"),
}
GENRE_TABLE = {genre: (share, tuple(first.split("|")), tuple(second.split("|")))
               for genre, (share, first, second) in _GENRE_WORDS.items()}
GENRES = tuple(GENRE_TABLE)

SUB_HEADS = ("Dawn", "Rise", "Fall", "Echoes", "Heart", "Wrath", "Curse", "Call", "Age", "Song", "Return", "Legacy")
SUB_TAILS = ("Ash", "Embers", "the Fallen", "Iron", "Kings", "Storms", "the Void", "the Deep", "Winter", "Ruin",
              "Fire")
SUB_WORDS = ("Reckoning", "Awakening", "Revelations", "Origins", "Redemption", "Uprising", "Aftermath", "Ascension",
              "Resurrection", "Genesis", "Eclipse", "Requiem", "Exodus", "Vengeance")
ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII")
EDITIONS = ("Deluxe Edition", "Game of the Year Edition", "Gold Edition", "Complete Edition",
             "Collector's Edition", "Limited Edition", "Day One Edition")
