"""The word lists the generated world (adakd.data.world) is drawn from: occupations, foods, traits,
terrains and what is said about them, creature and artifact parts, and the syllables names are made of."""
from __future__ import annotations

OCCUPATIONS = ["baker", "smith", "fisher", "weaver", "healer", "farmer", "potter", "sailor", "miner",
               "hunter", "teacher", "singer", "carpenter", "shepherd", "brewer", "scribe"]
# A thing each occupation uses: gift ideas, stories.
TOOLS = {"baker": "rolling pin", "smith": "hammer", "fisher": "fishing net", "weaver": "loom",
         "healer": "bag of herbs", "farmer": "plough", "potter": "wheel", "sailor": "compass",
         "miner": "lamp", "hunter": "bow", "teacher": "book", "singer": "songbook",
         "carpenter": "saw", "shepherd": "staff", "brewer": "barrel", "scribe": "quill"}
FOODS = ["honey cake", "fish stew", "apple pie", "goat cheese", "mushroom soup", "plum jam", "barley bread",
         "roasted nuts", "berry tart", "onion pie", "salted fish", "sweet rice"]
TRAITS = ["kind", "brave", "quiet", "clever", "cheerful", "stubborn", "patient", "curious", "shy",
          "generous", "proud", "gentle"]
HOBBIES = ["singing", "fishing", "painting", "dancing", "reading old maps", "carving wood",
           "growing flowers", "telling stories", "climbing hills", "playing the flute", "collecting stones",
           "watching the stars"]
TERRAINS = ["river", "lake", "hills", "forest", "coast", "marsh", "plain", "mountains"]
# How a town's setting is said: "<town> lies <place>".
TERRAIN_PLACE = {"river": "on the banks of a river", "lake": "beside a lake", "hills": "among green hills",
                 "forest": "at the edge of a forest", "coast": "on the coast", "marsh": "near a marsh",
                 "plain": "on a wide plain", "mountains": "high in the mountains"}
# Where a creature lives: "it lives <habitat>".
TERRAIN_HABITAT = {"river": "near rivers", "lake": "around lakes", "hills": "in the hills",
                   "forest": "in forests", "coast": "along the coast", "marsh": "in marshes",
                   "plain": "on open plains", "mountains": "in the mountains"}
# What a visitor can do there.
TERRAIN_ACTIVITIES = {
    "river": ["take a boat along the river", "fish in the river"],
    "lake": ["swim in the lake", "row across the lake"],
    "hills": ["walk in the hills", "watch the sunset from a hilltop"],
    "forest": ["look for mushrooms in the forest", "follow the old forest paths"],
    "coast": ["walk along the beach", "watch the ships in the harbour"],
    "marsh": ["watch the birds of the marsh", "pick reeds in the marsh"],
    "plain": ["ride across the plain", "visit the farms on the plain"],
    "mountains": ["climb a mountain path", "visit the old mines"],
}
PRODUCTS = ["cheese", "wool", "glass", "salt", "honey", "pottery", "rope", "wine", "silver", "paper",
            "candles", "boats"]
TOWN_SIZES = ["village", "town", "city"]
NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
COLOURS = ["green", "grey", "red", "blue", "golden", "black", "white", "brown", "silver", "orange"]
DIETS = ["berries", "fish", "grass", "insects", "seeds", "roots", "mice", "leaves"]
HUNTER_DIETS = ["fish", "insects", "mice"]       # the others make a plant-eater
CREATURE_SIZES = ["tiny", "small", "large", "huge"]
HABITS = ["sings at dawn", "sleeps all winter", "hides in burrows", "travels in large groups",
          "builds nests in trees", "glows at night", "swims in cold water", "hunts at night"]
TEMPERS = ["gentle", "fierce", "shy", "playful", "lazy", "curious"]
CREATURE_HEADS = ["moss", "ember", "frost", "reed", "stone", "mist", "thorn", "dusk", "brook", "ash", "fern",
                  "storm", "amber", "cinder", "dew", "gloom"]
CREATURE_TAILS = ["hound", "finch", "toad", "moth", "hare", "lizard", "owl", "newt", "boar", "crane",
                  "beetle", "fox", "otter", "wren", "goat", "eel"]
MATERIALS = ["silver", "gold", "oak", "glass", "stone", "bronze", "bone", "iron"]
OBJECTS = ["bell", "lantern", "crown", "harp", "mirror", "cup", "drum", "map", "key", "shield"]
PURPOSES = ["calls the rain", "brings good dreams", "keeps wolves away", "shows the way home",
            "heals small wounds", "makes bread rise", "calms the sea", "wakes the sleepers"]
# Syllables of invented names (people, towns, lands).
ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "br", "dr", "gr", "kr",
           "tr", "st", "sh", "th"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o"]
CODAS = ["n", "r", "l", "s", "m", "k", "", "", "th", "st"]
TOWN_ENDS = ["ford", "holm", "vale", "wick", "by", "mere", "stead", "moor", "haven", "ton"]
LAND_ENDS = ["ora", "ia", "en", "ar", "eth", "is"]
